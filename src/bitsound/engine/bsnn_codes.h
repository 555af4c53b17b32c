/* bsnn_codes.h: GENERATED from src/bitsound/graph/opcodes.py by
 *   python -m bitsound.graph.opcodes > src/bitsound/engine/bsnn_codes.h
 * Do not edit by hand; tests/test_graph.py checks that it is current. */
#ifndef BSNN_CODES_H
#define BSNN_CODES_H

#define BSNN_VERSION_MAJOR 2
#define BSNN_VERSION_MINOR 0
#define BSNN_HEADER_BYTES 40
#define BS_REC_META 100

enum {
    BS_OP_INPUT = 1,
    BS_OP_FEATURE_NORM = 2,
    BS_OP_AFFINE = 3,
    BS_OP_ACTIVATION = 4,
    BS_OP_CONV2D = 5,
    BS_OP_CONV1D = 6,
    BS_OP_PACK = 7,
    BS_OP_BINARY_CONV2D = 8,
    BS_OP_BINARY_CONV1D = 9,
    BS_OP_MAXPOOL2D = 10,
    BS_OP_MAXPOOL1D = 11,
    BS_OP_AVGPOOL2D = 12,
    BS_OP_AVGPOOL1D = 13,
    BS_OP_GLOBAL_AVG_POOL = 14,
    BS_OP_LINEAR = 15,
    BS_OP_ADD = 16,
    BS_OP_CONCAT = 17,
    BS_OP_SLICE = 18,
    BS_OP_FREQ_AFFINE = 19,
    BS_OP_NORMALIZE = 20,
    BS_OP_PERMUTE = 21,
    BS_OP_QUANTIZE = 22,
    BS_OP_DEQUANTIZE = 23,
    BS_OP_QCONV2D = 24,
    BS_OP_QCONV1D = 25,
    BS_OP_QLINEAR = 26,
    BS_OP_OUTPUT = 30,
};

enum {
    BS_F32 = 1,
    BS_BITS = 2,
    BS_I8 = 3,
};

enum {
    BS_W_F32 = 1,
    BS_W_F16 = 2,
    BS_W_SIGN = 3,
};

enum {
    BS_NORM_NONE = 0,
    BS_NORM_BAND = 1,
    BS_NORM_EXAMPLE = 2,
};

enum {
    BS_ACT_RELU = 1,
    BS_ACT_TANH = 2,
    BS_ACT_PRELU = 3,
    BS_ACT_SILU = 4,
    BS_ACT_SIGMOID = 5,
};

enum {
    BS_BOUT_DOT = 0,
    BS_BOUT_FLOAT = 1,
    BS_BOUT_BITS = 2,
};

enum {
    BS_QOUT_FLOAT = 0,
    BS_QOUT_INT8 = 1,
};

enum {
    BS_ADD_SAME = 0,
    BS_ADD_PAD = 1,
    BS_ADD_GROUP_MEAN = 2,
};

enum {
    BS_AXIS_H = 0,
    BS_AXIS_W = 1,
    BS_AXIS_C = 2,
};

/* op names, indexed by code (NULL: no op) */
#define BS_OP_CODE_MAX 30
static const char *const BS_OP_NAMES[BS_OP_CODE_MAX + 1] = {
    [1] = "input",
    [2] = "feature_norm",
    [3] = "affine",
    [4] = "activation",
    [5] = "conv2d",
    [6] = "conv1d",
    [7] = "pack",
    [8] = "binary_conv2d",
    [9] = "binary_conv1d",
    [10] = "maxpool2d",
    [11] = "maxpool1d",
    [12] = "avgpool2d",
    [13] = "avgpool1d",
    [14] = "global_avg_pool",
    [15] = "linear",
    [16] = "add",
    [17] = "concat",
    [18] = "slice",
    [19] = "freq_affine",
    [20] = "normalize",
    [21] = "permute",
    [22] = "quantize",
    [23] = "dequantize",
    [24] = "qconv2d",
    [25] = "qconv1d",
    [26] = "qlinear",
    [30] = "output",
};

/* instruction sets, for the binding's listing */
static const char *const BS_ISA_NAMES[] = {"avx512", "avx2", "scalar", "reference", NULL};

#endif
