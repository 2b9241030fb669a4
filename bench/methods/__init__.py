"""bench.methods: one thin file per decoding method behind one Protocol."""
