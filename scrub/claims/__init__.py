"""The claim layer: what a hypothesis says. Components and their channels (``sites``), what feeds what
(``structure``, the one source), hypothesis graphs and their builders (``hypothesis``, the module users
import), their validation (``validation``) into a frozen ``Claim`` (``claim``), hypothesis files (``files``),
features (``features``) and query-key masks (``masks``). Imports nothing from the engine."""
