"""The labelling queue: structures, their leases and labels in one ase.db file, and runners.

>>> from gpmlip.labelling import LabelQueue, label_queue
>>> queue = LabelQueue("queue.db", "emt", species=["Cu"])     # doctest: +SKIP
>>> queue.add(structures, source="md-800K")                    # doctest: +SKIP
>>> label_queue(queue, max_workers=2)                          # doctest: +SKIP
>>> queue.export("labelled.extxyz")                            # doctest: +SKIP

Parsl executors live in :mod:`gpmlip.labelling.parsl` (optional dependency).
"""

from gpmlip.labelling.queue import STATES, LabelQueue, QueueError, content_key
from gpmlip.labelling.runner import label_queue, label_structure, process_pool

__all__ = ["LabelQueue", "QueueError", "STATES", "content_key", "label_queue",
           "label_structure", "process_pool"]
