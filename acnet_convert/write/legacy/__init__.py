"""The legacy Paddle inference model: the deploy graph translated op by op (`ops`) with the
builder the handlers write with (`builder`), serialized by `writer`."""
