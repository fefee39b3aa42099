"""A third-party encoder with training defaults of its own (``EncoderSpec.train_defaults``): the batch pool
norm and a batch size."""
from nngraph.hookspecs import hookimpl


def make_encoder(**config):
    from nngraph.plugins.encoders.deepsets import DeepSets      # a real encoder with a pooled vector
    return DeepSets(**config)


@hookimpl
def nngraph_encoders():
    from nngraph.hookspecs import EncoderSpec
    return [EncoderSpec("normed-sets", factory=make_encoder, description="deepsets under another name (test plugin)",
                        train_defaults={"pool_norm": "batch", "batch_size": 8})]
