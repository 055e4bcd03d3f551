"""`sglang.lang.backend`: SGLang's backends. sgc's is `sgc.Runtime`; the others are refused."""
