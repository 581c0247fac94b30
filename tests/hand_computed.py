"""Maps of the one-convolution net, computed by hand (used for the Keras and PyTorch nets).

x is 4x4 with values -5..10; a 1x1 convolution with kernels [2, -1] and no bias gives
A_1 = 2x, A_2 = -x; global average pooling and a Dense/Linear layer with weights [3, 1] give
S = 3 mean(A_1) + mean(A_2) = 5 mean(x) = 12.5, and dS/dA_c = w_c / 16 at every position.
"""

import numpy as np

X = (np.arange(16, dtype="float32") - 5.0).reshape(1, 4, 4, 1)
POS = np.maximum(X[0, :, :, 0], 0.0)  # relu(x): every map below is a multiple of it
SCORE = 12.5

# G_1 = 3/16, G_2 = 1/16 everywhere; sum_ij x = 40.
EXPECTED = {
    # relu(3/16 * 2x + 1/16 * -x) = relu(5x/16)
    "gradcam": 5 / 16 * POS,
    # G constant over positions, so HiResCAM, Layer-CAM and XGrad-CAM reduce to Grad-CAM
    "hirescam": 5 / 16 * POS,
    "layercam": 5 / 16 * POS,
    "xgradcam": 5 / 16 * POS,
    # alpha_c = 1 / (2 + sum(A_c) G_c): alpha_1 = 1/(2 + 80*3/16) = 1/17, alpha_2 = 1/(2 - 40/16)
    # = -2; w_c = 16 alpha_c G_c: w_1 = 3/17, w_2 = -2; relu(3/17*2x + 2x) = relu(40x/17)
    "gradcam++": 40 / 17 * POS,
    # CAM keeps the sign: 3*2x + 1*(-x) = 5x
    "cam": 5 * X[0, :, :, 0],
}

# Score-CAM: masks minmax(2x) = (x + 5)/15 and minmax(-x) = (10 - x)/15; with sum x = 40 and
# sum x^2 = 440, the masked scores are s_1 = 5 mean(x (x + 5))/15 = 40/3 and
# s_2 = 5 mean(x (10 - x))/15 = -5/6; w = softmax(s): w_1 = 1/(1 + exp(-85/6)), w_2 = 1 - w_1;
# relu(w_1 * 2x + w_2 * (-x)) = (2 w_1 - w_2) relu(x)
_W1 = 1.0 / (1.0 + np.exp(-85.0 / 6.0))
EXPECTED["scorecam"] = (2 * _W1 - (1 - _W1)) * POS

# Faster Score-CAM scores the k = 64 channels of largest variance: both of the two here.
EXPECTED["fastscorecam"] = EXPECTED["scorecam"]

# IS-CAM (10 steps): S is linear in the image, so each score is scaled by mean(k/10) = 11/20:
# s_1 = 22/3, s_2 = -11/24, w_1 = 1/(1 + exp(-187/24)); relu(w_1 * 2x - w_2 * x) = (3 w_1 - 1) relu(x)
_IS_W1 = 1.0 / (1.0 + np.exp(-187.0 / 24.0))
EXPECTED["iscam"] = (3 * _IS_W1 - 1) * POS

# Ablation-CAM at the conv layer: y = 12.5; without A_1, y_1 = mean(-x) = -2.5, w_1 = 15/12.5
# = 1.2; without A_2, y_2 = 3 mean(2x) = 15, w_2 = -2.5/12.5 = -0.2; relu(2.4x + 0.2x) = 2.6 relu(x).
# Needs explain() to pass SiteData.score_site.
EXPECTED["ablationcam"] = 2.6 * POS
