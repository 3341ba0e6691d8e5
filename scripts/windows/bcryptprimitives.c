/*
 * A stand-in bcryptprimitives.dll for running Rust programs under wine 8.0.
 *
 * Rust's std (1.78+) gets random bytes (HashMap seeds) from ProcessPrng, exported by
 * bcryptprimitives.dll since Windows 10. wine 8.0 has no such DLL, so every Rust .exe fails
 * to load there (wine exits 53 without a word). This DLL exports ProcessPrng and forwards
 * to RtlGenRandom (advapi32's SystemFunction036), which wine has. It is for tests under
 * wine only: a real Windows has the real DLL, and nothing of runstream's ships this one.
 *
 * Built by scripts/wine-runner.sh:
 *   x86_64-w64-mingw32-gcc -shared -O2 -o bcryptprimitives.dll bcryptprimitives.c -ladvapi32
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x7fffffff ? 0x7fffffff : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
