"""Looking inside a trained model: ``lenbench viz`` (:mod:`lenbench.inspect.viz`), the attention terms of one layer."""
