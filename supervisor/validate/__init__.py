"""The built-in validator (``[validate] kind = "mujoco"``): DexGraspBench's force-closure
test, adapted to two hands, run in MuJoCo on grasps as main.py saves them. ``hands``
reads the checkout's two Shadow-hand MJCFs and fixes what keeps them from simulating;
``convex`` reads the object's CoACD parts; ``pose`` turns main.py's 28 named numbers into
MuJoCo's; ``scene`` compiles both hands and the object (and keeps compiled scenes);
``protocol`` runs the test on one grasp; ``builtin`` is the entry point (``check``,
``check_setup``); ``task`` is one task of the pipeline's validation pool
(``python -m supervisor.validate.task REQUEST.json``). Plain Python, numpy and mujoco: no
torch, no anyio; it may import ``core``, ``config``, ``storage`` and ``dataset``, and ``run`` and
``commands`` import it.
"""
