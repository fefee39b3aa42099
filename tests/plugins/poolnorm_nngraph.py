"""A third-party encoder that opts into training's batch pool norm by default (``auto_pool_norm``)."""
from nngraph.hookspecs import hookimpl


def make_encoder(**config):
    from nngraph.plugins.encoders.deepsets import DeepSets      # a real encoder with a pooled vector
    return DeepSets(**config)


@hookimpl
def nngraph_encoders():
    from nngraph.hookspecs import EncoderSpec
    return [EncoderSpec("normed-sets", factory=make_encoder, description="deepsets under another name (test plugin)",
                        auto_pool_norm="batch")]
