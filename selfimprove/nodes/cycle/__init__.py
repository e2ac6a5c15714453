"""Nodes of the improvement-cycle graph. Their side effects are idempotent: a node re-run
after a crash finds its earlier writes (store shard id, committed version, saved evaluation)
and reuses them instead of writing again."""
