/* platform_m4.c: a bare-metal Cortex-M4F image for QEMU's mps2-an386 (and real parts alike).
 *
 * Vector table and reset handler (enable the FPU before any float instruction, copy .data, zero
 * .bss, paint the stack to measure its high-water mark, call main, exit with its status);
 * ARM semihosting (open/read files on the host, write text, exit) through BKPT 0xAB, which QEMU
 * answers with -semihosting; SysTick as the clock. QEMU has no cycle model: with -icount shift=0
 * every instruction advances its virtual clock by 1 ns, and SysTick runs at 25 MHz, so one tick
 * is 40 instructions.
 */
#include <stdint.h>
#include <string.h>

extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end, __stack_bottom, __stack_top;
int main(void);

#define STACK_PAINT 0xC5AC5AC5u

/* ---- semihosting ---- */
static int semihost(int op, void *arg) {
    register int r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static void sh_exit(int code) {
    uint32_t block[2] = {0x20026u /* ADP_Stopped_ApplicationExit */, (uint32_t)code};
    semihost(0x20 /* SYS_EXIT_EXTENDED */, block);
    for (;;) {
    }
}

void plat_puts(const char *s) { semihost(0x04 /* SYS_WRITE0 */, (void *)s); }

int plat_open(const char *name) {
    uint32_t block[3] = {(uint32_t)name, 1u /* "rb" */, (uint32_t)strlen(name)};
    return semihost(0x01 /* SYS_OPEN */, block);
}

int plat_read(int handle, void *buf, uint32_t n) {
    uint32_t block[3] = {(uint32_t)handle, (uint32_t)buf, n};
    return semihost(0x06 /* SYS_READ: returns the bytes not read */, block) != 0;
}

/* ---- SysTick: a 24-bit down-counter at 25 MHz; wraps counted by its interrupt ---- */
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
static volatile uint32_t systick_wraps;

void SysTick_Handler(void) { systick_wraps++; }

void plat_init(void) {
    SYST_RVR = 0xFFFFFFu;
    SYST_CVR = 0;
    systick_wraps = 0;
    SYST_CSR = 7u; /* processor clock, interrupt, enable */
    while (SYST_CVR == 0) {
    } /* the first reload */
}

uint64_t plat_ticks(void) {
    uint32_t w, v;
    do {
        w = systick_wraps;
        v = SYST_CVR;
    } while (w != systick_wraps);
    return (uint64_t)w * 0x1000000u + (0xFFFFFFu - v);
}

uint32_t plat_stack_used(void) {
    const uint32_t *p = &__stack_bottom;
    while (p < &__stack_top && *p == STACK_PAINT) p++;
    return (uint32_t)((const char *)&__stack_top - (const char *)p);
}

/* ---- start-up ---- */
void Default_Handler(void) { sh_exit(99); }

void Reset_Handler(void) {
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20; /* CPACR: CP10, CP11 full access */
    __asm__ volatile("dsb\n\tisb");
    for (uint32_t *s = &__data_load, *d = &__data_start; d < &__data_end;) *d++ = *s++;
    for (uint32_t *d = &__bss_start; d < &__bss_end;) *d++ = 0;
    uint32_t sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t *d = &__stack_bottom; (uint32_t)d < sp - 64u; d++) *d = STACK_PAINT;
    sh_exit(main());
}

/* the vector table: initial stack pointer, then the handlers (reset, NMI, hard fault, ..., SysTick) */
typedef union {
    const uint32_t *sp;
    void (*handler)(void);
} bsm_vector;

__attribute__((section(".vectors"), used)) const bsm_vector bsm_vectors[16] = {
    {.sp = &__stack_top}, {.handler = Reset_Handler}, {.handler = Default_Handler}, {.handler = Default_Handler},
    {.handler = Default_Handler}, {.handler = Default_Handler}, {.handler = Default_Handler}, {0}, {0}, {0}, {0},
    {.handler = Default_Handler}, {.handler = Default_Handler}, {0}, {.handler = Default_Handler},
    {.handler = SysTick_Handler}};
