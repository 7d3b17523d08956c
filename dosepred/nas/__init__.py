"""Architecture search: the space, the weight-sharing supernet, the evaluator, strategies and teacher selection."""
