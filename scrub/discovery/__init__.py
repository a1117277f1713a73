"""Circuit discovery under causal-scrubbing semantics (issue #17): edges of ``full_graph`` (``edges``),
EAP and EAP-IG attribution (``attribution``), exact greedy verification by the batched engine (``exact``,
``search``), the faithfulness curve (``curve``), the result and its hypothesis file (``result``), and
``discover`` (``api``). Imports the claim, engine, patching and metrics layers; none of them imports it."""

from scrub.discovery.api import DiscoveryError, discover
from scrub.discovery.edges import Edge, all_edges
from scrub.discovery.result import Discovery, EdgeRecord

__all__ = ["discover", "Discovery", "DiscoveryError", "Edge", "EdgeRecord", "all_edges"]
