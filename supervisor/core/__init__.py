"""The state machine, pure: the records of an experiment (objects, rounds, GPUs) and their
statuses (``records``), the events that change them as the journal stores them
(``events``), the state with its counters and the effects a transition asks for
(``state``), every transition in one function (``transitions.apply``) with its handlers
for an object's life (``lifecycle``), GPU health (``health``), how many rounds a card
holds (``packing``) and start-up and recovery (``reconcile``), the plan (``plan``: names, seeds, which round next) and a GPU's key
(``slots``). No I/O, no anyio, no logging: tested by plain function calls. It imports
nothing outside ``core``; every other part may import it.
"""
