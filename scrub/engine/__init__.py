"""The resampling engine: draws (``sampling``), treeification (``treeify``), component maths and the clean
run (``compute``), factored unembedding (``unembed``) and the batched evaluator (``evaluator``)."""
