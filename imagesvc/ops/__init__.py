"""One module per pipeline operation; ``registry.OPS`` maps proto oneof names to them."""
