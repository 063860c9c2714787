"""Building, running and distilling the local (edge) models.

Knows nothing of routing or HTTP: :mod:`router.backends.edge` adapts
:class:`edge_models.runtime.EdgeModel` to the router's backend contract.
"""
