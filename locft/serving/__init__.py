"""Serving: a version = base model + its snapshot's tensors -> answers (`locft ask`, the HTTP API).

Modules: `served_version` (a version ready to serve, and the API's model names for versions),
`generation` (one batch of requests completed in one `generate` call: stop strings, streaming,
logprobs), `model_server` (ModelServer: the loaded versions, hot swap and the batching worker).
"""
