"""`sglang.lang`: the modules of SGLang's frontend that programs import from (see `sglang`)."""
