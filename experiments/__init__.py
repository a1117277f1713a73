"""Studies that import scrub and hypotheses and write results/ (shipped in the wheel beside scrub, without
results/; scrub imports ``experiments.induction_study`` only when ``scrub study`` runs)."""
