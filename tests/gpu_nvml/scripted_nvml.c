/*
 * A scripted NVML for the tests: a shared library with the symbols, struct layouts and
 * return codes of NVIDIA's libnvidia-ml (nvml.h), whose answers come from a state file
 * that the test rewrites while runstream runs. Built by the tests with the system `cc`
 * (tests/gpu_nvml/scripted.rs) and loaded by runstream through RUNSTREAM_NVML_LIBRARY; nothing
 * prebuilt is committed.
 *
 * SCRIPTED_NVML_STATE names the state file, read again at every nvmlInit* and at every
 * nvmlDeviceGetCount_v2 (the start of each of runstream's sweeps), one item a line:
 *
 *   init CODE                      what nvmlInit_v2 / nvmlInitWithFlags return (SUCCESS)
 *   device TOTAL FREE USED UTIL_GPU UTIL_MEM TEMP POWER_MW UUID NAME...
 *   process DEV PID MEM            a compute process; MEM "na" = NVML_VALUE_NOT_AVAILABLE
 *   sm DEV PID SM_PERCENT          a process utilisation sample
 *   fail FUNCTION CODE             FUNCTION returns CODE (e.g. GPU_IS_LOST, TIMEOUT)
 *
 * SCRIPTED_NVML_CALLS, when set, names a file to which every call appends its function
 * name and a newline: the tests count sweeps with it instead of sleeping.
 *
 * Compile with -DOMIT_INIT to leave out nvmlInit_v2 (a "missing symbol"), with
 * -DOMIT_MEMORY_V2 to leave out nvmlDeviceGetMemoryInfo_v2 (a driver older than R510).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;

/* nvmlReturn_t values, as in nvml.h. */
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NO_PERMISSION 4
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_TIMEOUT 10
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_LIB_RM_VERSION_MISMATCH 18
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25
#define NVML_ERROR_UNKNOWN 999

#define NVML_VALUE_NOT_AVAILABLE (~0ULL)

/* Struct layouts as in nvml.h. */
typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

#define NVML_STRUCT_VERSION(size, ver) ((unsigned int)(size) | ((ver) << 24U))
#define nvmlMemory_v2 NVML_STRUCT_VERSION(sizeof(nvmlMemory_v2_t), 2)

typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

/* nvmlProcessInfo_t of the _v3 process calls (nvmlProcessInfo_v2_t): 24 bytes. */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;

_Static_assert(sizeof(nvmlMemory_v2_t) == 40, "nvmlMemory_v2_t is 40 bytes");
_Static_assert(sizeof(nvmlProcessInfo_t) == 24, "nvmlProcessInfo_t (v2) is 24 bytes");
_Static_assert(sizeof(nvmlProcessUtilizationSample_t) == 32, "process sample is 32 bytes");

#define MAX_DEVICES 8
#define MAX_ITEMS 64

struct device {
    unsigned long long total, free, used;
    unsigned int util_gpu, util_mem, temp, power_mw;
    char uuid[80];
    char name[96];
};

struct process {
    unsigned int device, pid;
    unsigned long long memory;
};

struct sample {
    unsigned int device, pid, sm;
};

struct failure {
    char function[64];
    nvmlReturn_t code;
};

static struct {
    nvmlReturn_t init;
    unsigned int devices_len, processes_len, samples_len, failures_len;
    struct device devices[MAX_DEVICES];
    struct process processes[MAX_ITEMS];
    struct sample samples[MAX_ITEMS];
    struct failure failures[MAX_ITEMS];
} state;

static int initialised;

static const struct {
    const char *name;
    nvmlReturn_t code;
} codes[] = {
    {"SUCCESS", NVML_SUCCESS},
    {"UNINITIALIZED", NVML_ERROR_UNINITIALIZED},
    {"INVALID_ARGUMENT", NVML_ERROR_INVALID_ARGUMENT},
    {"NOT_SUPPORTED", NVML_ERROR_NOT_SUPPORTED},
    {"NO_PERMISSION", NVML_ERROR_NO_PERMISSION},
    {"NOT_FOUND", NVML_ERROR_NOT_FOUND},
    {"INSUFFICIENT_SIZE", NVML_ERROR_INSUFFICIENT_SIZE},
    {"DRIVER_NOT_LOADED", NVML_ERROR_DRIVER_NOT_LOADED},
    {"TIMEOUT", NVML_ERROR_TIMEOUT},
    {"GPU_IS_LOST", NVML_ERROR_GPU_IS_LOST},
    {"LIB_RM_VERSION_MISMATCH", NVML_ERROR_LIB_RM_VERSION_MISMATCH},
    {"ARGUMENT_VERSION_MISMATCH", NVML_ERROR_ARGUMENT_VERSION_MISMATCH},
    {"UNKNOWN", NVML_ERROR_UNKNOWN},
};

static nvmlReturn_t code_of(const char *name) {
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (strcmp(codes[i].name, name) == 0) return codes[i].code;
    return NVML_ERROR_UNKNOWN;
}

static void record(const char *function) {
    const char *path = getenv("SCRIPTED_NVML_CALLS");
    if (!path) return;
    FILE *f = fopen(path, "a");
    if (!f) return;
    fprintf(f, "%s\n", function);
    fclose(f);
}

/* Reads the state file again; a missing file is a machine with no GPU. */
static void load(void) {
    memset(&state, 0, sizeof state);
    const char *path = getenv("SCRIPTED_NVML_STATE");
    FILE *f = path ? fopen(path, "r") : NULL;
    if (!f) return;
    char line[512], word[64], arg[64];
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%63s", word) != 1) continue;
        if (strcmp(word, "init") == 0 && sscanf(line, "init %63s", arg) == 1) {
            state.init = code_of(arg);
        } else if (strcmp(word, "device") == 0 && state.devices_len < MAX_DEVICES) {
            struct device *d = &state.devices[state.devices_len];
            if (sscanf(line, "device %llu %llu %llu %u %u %u %u %79s %95[^\n]", &d->total,
                       &d->free, &d->used, &d->util_gpu, &d->util_mem, &d->temp,
                       &d->power_mw, d->uuid, d->name) == 9)
                state.devices_len++;
        } else if (strcmp(word, "process") == 0 && state.processes_len < MAX_ITEMS) {
            struct process *p = &state.processes[state.processes_len];
            if (sscanf(line, "process %u %u %63s", &p->device, &p->pid, arg) == 3) {
                p->memory = strcmp(arg, "na") == 0 ? NVML_VALUE_NOT_AVAILABLE
                                                   : strtoull(arg, NULL, 10);
                state.processes_len++;
            }
        } else if (strcmp(word, "sm") == 0 && state.samples_len < MAX_ITEMS) {
            struct sample *s = &state.samples[state.samples_len];
            if (sscanf(line, "sm %u %u %u", &s->device, &s->pid, &s->sm) == 3)
                state.samples_len++;
        } else if (strcmp(word, "fail") == 0 && state.failures_len < MAX_ITEMS) {
            struct failure *x = &state.failures[state.failures_len];
            if (sscanf(line, "fail %63s %63s", x->function, arg) == 2) {
                x->code = code_of(arg);
                state.failures_len++;
            }
        }
    }
    fclose(f);
}

/* Every entry point starts here: records the call, answers a scripted failure. */
static nvmlReturn_t enter(const char *function) {
    record(function);
    for (unsigned int i = 0; i < state.failures_len; i++)
        if (strcmp(state.failures[i].function, function) == 0) return state.failures[i].code;
    return NVML_SUCCESS;
}

#define ENTER()                                          \
    do {                                                 \
        nvmlReturn_t scripted = enter(__func__);         \
        if (scripted != NVML_SUCCESS) return scripted;   \
        if (!initialised) return NVML_ERROR_UNINITIALIZED; \
    } while (0)

/* A device handle is a pointer to its entry. */
typedef struct device *nvmlDevice_t;

static int valid(nvmlDevice_t d) {
    return d >= state.devices && d < state.devices + state.devices_len;
}

static unsigned int index_of(nvmlDevice_t d) { return (unsigned int)(d - state.devices); }

static nvmlReturn_t copy_string(char *out, unsigned int length, const char *s) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(s) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, s);
    return NVML_SUCCESS;
}

static nvmlReturn_t init(const char *function) {
    load();
    record(function);
    if (state.init != NVML_SUCCESS) return state.init;
    initialised++;
    return NVML_SUCCESS;
}

#ifndef OMIT_INIT
nvmlReturn_t nvmlInit_v2(void) { return init(__func__); }
#endif

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return init(__func__);
}

nvmlReturn_t nvmlShutdown(void) {
    record(__func__);
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    initialised--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (codes[i].code == result) return codes[i].name;
    return "UNKNOWN";
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    ENTER();
    return copy_string(version, length, "570.00.scripted");
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    load();
    ENTER();
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = state.devices_len;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    ENTER();
    if (!device || index >= state.devices_len) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &state.devices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    ENTER();
    if (!valid(device)) return NVML_ERROR_INVALID_ARGUMENT;
    return copy_string(name, length, device->name);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    ENTER();
    if (!valid(device)) return NVML_ERROR_INVALID_ARGUMENT;
    return copy_string(uuid, length, device->uuid);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    ENTER();
    if (!valid(device) || !memory) return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = device->total;
    memory->free = device->free;
    memory->used = device->used;
    return NVML_SUCCESS;
}

#ifndef OMIT_MEMORY_V2
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    ENTER();
    if (!valid(device) || !memory) return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    memory->total = device->total;
    memory->reserved = 0;
    memory->free = device->free;
    memory->used = device->used;
    return NVML_SUCCESS;
}
#endif

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *u) {
    ENTER();
    if (!valid(device) || !u) return NVML_ERROR_INVALID_ARGUMENT;
    u->gpu = device->util_gpu;
    u->memory = device->util_mem;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *temp) {
    ENTER();
    if (!valid(device) || !temp || sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    *temp = device->temp;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    ENTER();
    if (!valid(device) || !power) return NVML_ERROR_INVALID_ARGUMENT;
    *power = device->power_mw;
    return NVML_SUCCESS;
}

/* Like NVML: a count too small (or no buffer) sets the count needed and answers
 * NVML_ERROR_INSUFFICIENT_SIZE; with no process at all it is SUCCESS and 0. */
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                     unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    ENTER();
    if (!valid(device) || !count) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int n = 0;
    for (unsigned int i = 0; i < state.processes_len; i++)
        if (state.processes[i].device == index_of(device)) n++;
    if (n > *count || (n > 0 && !infos)) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    n = 0;
    for (unsigned int i = 0; i < state.processes_len; i++) {
        struct process *p = &state.processes[i];
        if (p->device != index_of(device)) continue;
        infos[n].pid = p->pid;
        infos[n].usedGpuMemory = p->memory;
        infos[n].gpuInstanceId = 0xFFFFFFFF;
        infos[n].computeInstanceId = 0xFFFFFFFF;
        n++;
    }
    *count = n;
    return NVML_SUCCESS;
}

/* Like NVML: no buffer sets the count and answers NVML_ERROR_INSUFFICIENT_SIZE; no
 * sample since lastSeenTimeStamp is NVML_ERROR_NOT_FOUND. */
nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device,
                                             nvmlProcessUtilizationSample_t *utilization,
                                             unsigned int *count,
                                             unsigned long long lastSeenTimeStamp) {
    (void)lastSeenTimeStamp;
    ENTER();
    if (!valid(device) || !count) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int n = 0;
    for (unsigned int i = 0; i < state.samples_len; i++)
        if (state.samples[i].device == index_of(device)) n++;
    if (n == 0) return NVML_ERROR_NOT_FOUND;
    if (!utilization || n > *count) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    n = 0;
    for (unsigned int i = 0; i < state.samples_len; i++) {
        struct sample *s = &state.samples[i];
        if (s->device != index_of(device)) continue;
        memset(&utilization[n], 0, sizeof utilization[n]);
        utilization[n].pid = s->pid;
        utilization[n].timeStamp = 1;
        utilization[n].smUtil = s->sm;
        n++;
    }
    *count = n;
    return NVML_SUCCESS;
}
