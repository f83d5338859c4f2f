# Synthetic raw data in the exact public layouts, written under results/raw/<dataset>/ when
# `synthetic.enabled` is true (the default). One rule per data set; deterministic from `seed`.

# >>> synthetic_brats
# <<< synthetic_brats

# >>> synthetic_mrnet
# <<< synthetic_mrnet

# >>> synthetic_rsna
# <<< synthetic_rsna

# >>> synthetic_oct
# <<< synthetic_oct
