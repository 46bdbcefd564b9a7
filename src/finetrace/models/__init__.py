"""The models: loading, the pair under comparison, its residual stream and its likelihoods."""
