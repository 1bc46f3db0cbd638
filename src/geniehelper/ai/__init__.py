"""AI for media jobs: a client for an Ollama-compatible vision server and an OpenAI-style
speech-to-text endpoint (`client`), and a local server speaking both (`local_server`) for tests and
`./dev up`. A real Ollama works by pointing OLLAMA_URL at it."""
