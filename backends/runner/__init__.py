"""The Transformers model runner the three HF backends share: model loading, the runner over a
Transformers model, and its left-padded batch KV cache."""
