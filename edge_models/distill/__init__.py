"""The distillation loop: captured cloud answers train the edge model (see docs/architecture.md).

Data (:mod:`.rows`, :mod:`.store`), the student's view of a prompt (:mod:`.prefix`),
training (:mod:`.train`, torch only there), export, evaluation and the registry of
promoted versions. Nothing here imports torch at import time.
"""
