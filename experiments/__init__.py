"""Studies that import scrub and hypotheses and write results/ (never imported by scrub)."""
