"""The resampling engine: draws (``sampling``), treeification (``treeify``), component maths and the clean
run (``compute``), where activations are resampled (``reads``), grouping reads into batched work (``plan``),
factored unembedding (``unembed``) and the batched evaluator (``evaluator``)."""
