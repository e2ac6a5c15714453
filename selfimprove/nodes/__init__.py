"""Graph nodes, one per file: each is ``state -> partial state`` and does no storage I/O."""
