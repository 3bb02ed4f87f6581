"""Transcoders: train, load, save and measure the sparse stand-ins for a model's MLPs.

    ts = acdc.train_transcoders(model, corpus, layers=[0, 1], tokens=200_000, seed=0, checkpoint="run/")
    ts.save("tc/");  ts = acdc.load_transcoders("tc/", model)         # or a sparsify, SAELens or circuit-tracer folder, a hub name
    print(acdc.transcoder_fidelity(model, ts, corpus).table())

See `transcoder` (the object and its file format), `training`, `corpus` (token streams),
`formats` (published layouts), `clt` (cross-layer transcoders; `clt_formats` their published layouts), `fidelity` and `pages` (pages of top contexts and logit effects).
"""

from .clt import CLTConfig, CrossLayerTranscoder, FeatureDictionary
from .clt_formats import load_clt, read_circuit_tracer_clt, read_sparsify_clt
from .clt_training import train_clt
from .corpus import CorpusWarning, GeneratedStream, TextStream, TokenStream, as_token_stream, text_stream
from .fidelity import Fidelity, transcoder_fidelity
from .formats import load_dictionary, load_transcoders, read_circuit_tracer, read_saelens, read_sparsify
from .pages import FeatureInfo, active_features, feature_pages, feature_report
from .training import TrainOptions, train_transcoders
from .transcoder import ACTIVATIONS, ModelInfo, Transcoder, TranscoderConfig, TranscoderSet

__all__ = [
    "CorpusWarning", "as_token_stream",
    "active_features",
    "ACTIVATIONS", "CLTConfig", "CrossLayerTranscoder", "FeatureDictionary", "FeatureInfo", "Fidelity", "GeneratedStream", "ModelInfo", "TextStream", "TokenStream", "TrainOptions", "Transcoder",
    "TranscoderConfig", "TranscoderSet", "feature_pages", "feature_report", "load_clt", "load_dictionary", "load_transcoders", "read_circuit_tracer", "read_circuit_tracer_clt", "read_saelens", "read_sparsify", "read_sparsify_clt", "text_stream", "train_clt", "train_transcoders",
    "transcoder_fidelity",
]
