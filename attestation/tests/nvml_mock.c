/* A stand-in for NVIDIA's libnvidia-ml.so.1 for attestation/tests/nvml.rs:
 * the calls the NVML producer makes, with the structures as nvml.h (R550 and
 * later) declares them, written independently of the Rust binding. Behaviour
 * comes from the environment:
 *   NVML_MOCK_REPORT  file of the raw SPDM report every GPU returns
 *   NVML_MOCK_CHAIN   file of the PEM attestation certificate chain
 *   NVML_MOCK_GPUS    number of GPUs (default 1)
 *   NVML_MOCK_CC      on | off | devtools (default on)
 *   NVML_MOCK_READY   file written with "1" when the GPUs are declared ready
 *   NVML_MOCK_NONCE   file the last requested nonce is written to */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_UNKNOWN 999

#define NVML_GPU_CERT_CHAIN_SIZE 0x1000
#define NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE 0x1400
#define NVML_CC_GPU_CEC_NONCE_SIZE 0x20
#define NVML_CC_GPU_ATTESTATION_REPORT_SIZE 0x2000
#define NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE 0x1000

typedef struct nvmlConfComputeSystemState_st {
    unsigned int environment;
    unsigned int ccFeature;
    unsigned int devToolsMode;
} nvmlConfComputeSystemState_t;

typedef struct nvmlConfComputeGpuCertificate_st {
    unsigned int certChainSize;
    unsigned int attestationCertChainSize;
    unsigned char certChain[NVML_GPU_CERT_CHAIN_SIZE];
    unsigned char attestationCertChain[NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE];
} nvmlConfComputeGpuCertificate_t;

typedef struct nvmlConfComputeGpuAttestationReport_st {
    unsigned int isCecAttestationReportPresent;
    unsigned int attestationReportSize;
    unsigned int cecAttestationReportSize;
    unsigned char nonce[NVML_CC_GPU_CEC_NONCE_SIZE];
    unsigned char attestationReport[NVML_CC_GPU_ATTESTATION_REPORT_SIZE];
    unsigned char cecAttestationReport[NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE];
} nvmlConfComputeGpuAttestationReport_t;

static long read_file(const char *var, unsigned char *buf, long cap) {
    const char *path = getenv(var);
    if (!path) return -1;
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    long n = (long)fread(buf, 1, (size_t)cap, f);
    fclose(f);
    return n;
}

static unsigned int gpus(void) {
    const char *n = getenv("NVML_MOCK_GPUS");
    return n ? (unsigned int)atoi(n) : 1;
}

nvmlReturn_t nvmlInit_v2(void) { return NVML_SUCCESS; }
nvmlReturn_t nvmlShutdown(void) { return NVML_SUCCESS; }
const char *nvmlErrorString(nvmlReturn_t r) { return r == NVML_ERROR_NOT_SUPPORTED ? "Not Supported" : "Unknown Error"; }

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    *count = gpus();
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (index >= gpus()) return NVML_ERROR_INVALID_ARGUMENT;
    *device = (nvmlDevice_t)(size_t)(index + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetConfComputeState(nvmlConfComputeSystemState_t *state) {
    const char *cc = getenv("NVML_MOCK_CC");
    state->environment = 1;
    state->ccFeature = (!cc || strcmp(cc, "off") != 0) ? 1 : 0;
    state->devToolsMode = (cc && strcmp(cc, "devtools") == 0) ? 1 : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemSetConfComputeGpusReadyState(unsigned int ready) {
    const char *path = getenv("NVML_MOCK_READY");
    if (path) {
        FILE *f = fopen(path, "w");
        if (f) { fprintf(f, "%u", ready); fclose(f); }
    }
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetConfComputeGpuAttestationReport(nvmlDevice_t device, nvmlConfComputeGpuAttestationReport_t *r) {
    (void)device;
    const char *nonce_path = getenv("NVML_MOCK_NONCE");
    if (nonce_path) {
        FILE *f = fopen(nonce_path, "wb");
        if (f) { fwrite(r->nonce, 1, NVML_CC_GPU_CEC_NONCE_SIZE, f); fclose(f); }
    }
    long n = read_file("NVML_MOCK_REPORT", r->attestationReport, NVML_CC_GPU_ATTESTATION_REPORT_SIZE);
    if (n <= 0) return NVML_ERROR_NOT_SUPPORTED;
    r->attestationReportSize = (unsigned int)n;
    r->isCecAttestationReportPresent = 0;
    r->cecAttestationReportSize = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetConfComputeGpuCertificate(nvmlDevice_t device, nvmlConfComputeGpuCertificate_t *c) {
    (void)device;
    long n = read_file("NVML_MOCK_CHAIN", c->attestationCertChain, NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE);
    if (n <= 0) return NVML_ERROR_NOT_SUPPORTED;
    c->attestationCertChainSize = (unsigned int)n;
    c->certChainSize = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    snprintf(version, length, "550.90.07");
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetVbiosVersion(nvmlDevice_t device, char *version, unsigned int length) {
    (void)device;
    snprintf(version, length, "96.00.9F.00.01");
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetArchitecture(nvmlDevice_t device, unsigned int *arch) {
    (void)device;
    *arch = 9; /* NVML_DEVICE_ARCH_HOPPER */
    return NVML_SUCCESS;
}
