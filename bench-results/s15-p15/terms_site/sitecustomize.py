"""For A/B runs only: with this directory on PYTHONPATH and CORERT_BF16_TERMS=1|2x|2w|3, amx-bf16 loads with
that many bf16 tile products a block (matmul_bf16.TERMS) instead of its default; any process, children too."""
import os

if os.environ.get("CORERT_BF16_TERMS"):
    import attrs
    from corert.engines.native import matmul_bf16, products

    products.PRODUCTS["amx-bf16"] = attrs.evolve(products.PRODUCTS["amx-bf16"],
                                                  bf16_split=matmul_bf16.TERMS[os.environ["CORERT_BF16_TERMS"]])
