"""The gallery: each object's grasps drawn with the user's own BimanGrasp hand model, for
``show`` and the report. ``helper`` runs as a child in BimanGrasp's Python and imports the
checkout's ``HandModel`` and ``ObjectModel`` as its ``visualization.py`` does (it imports
nothing of ours); ``client`` drives it; ``drawing`` draws objects in parallel through the
``cache``; ``meshes`` keeps a grasp as each link's rigid motion from a reference pose;
``select`` chooses the grasps; ``picture`` draws the report's small pictures with numpy;
``page`` writes the interactive pages; ``build`` puts them together. It may import
``core``, ``config``, ``storage`` and ``dataset``; only ``commands`` imports it. The
supervisor's own environment never imports torch.
"""
