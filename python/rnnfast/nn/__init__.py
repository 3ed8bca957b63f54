"""Model pieces above the kernels: the model, its readouts and losses, clipping, the
initialisations, optimisers and schedules, activations and the batch type."""
