"""The paper's analysis: spectral and gradient-flow diagnostics of a model
(:mod:`~rnnfast.analysis.diagnostics`) and the one-neuron dynamical system
(:mod:`~rnnfast.analysis.dynamics`)."""
