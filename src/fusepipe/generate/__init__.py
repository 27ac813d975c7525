"""The `generate` stage (ProFuser inference mode): sample responses from every model of the fusion."""
