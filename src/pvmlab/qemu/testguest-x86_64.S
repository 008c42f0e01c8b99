# pvmlab's KVM test guest for x86_64 (pvmlab.arch X86_64.test_guest, run by
# pvmlab.qemu.kvmprobe). QEMU runs it as its -bios image (64 KiB, mapped to end at 4 GiB):
# real mode -> protected mode -> x87 and SSE on -> identity paging of 4 GiB with 2 MiB pages ->
# long mode -> write 16 MiB of RAM -> write MARK to the isa-debug-exit port, which ends QEMU
# with exit code (MARK << 1) | 1. Build: as --64 -o g.o FILE && ld -m elf_x86_64
# -Ttext=0xFFFF0000 --oformat binary -o g.bin g.o
        .set BASE, 0xFFFF0000
        .set PML4, 0x10000
        .set PDPT, 0x11000
        .set PD, 0x12000            # four page directories, 0x12000-0x15fff
        .set DEBUG_EXIT, 0xf4
        .set MARK, 0x31             # exit code 99

        .text
        .code16
start16:
        cli
        lgdtl %cs:(gdt_ptr - BASE)
        movl %cr0, %eax
        orl $0x1, %eax              # PE
        movl %eax, %cr0
        ljmpl $0x08, $start32

        .code32
start32:
        movw $0x10, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movl %cr0, %eax
        andl $~0x4, %eax            # EM off: x87 in hardware
        orl $0x2, %eax              # MP
        movl %eax, %cr0
        movl %cr4, %eax
        orl $0x620, %eax            # PAE, OSFXSR, OSXMMEXCPT
        movl %eax, %cr4
        fninit
        fld1
        fld1
        faddp
        fstp %st(0)
        # page tables
        movl $PML4, %edi
        xorl %eax, %eax
        movl $(6 * 4096 / 4), %ecx
        rep stosl
        movl $(PDPT | 0x3), PML4
        movl $PDPT, %edi
        movl $(PD | 0x3), %eax
        movl $4, %ecx
1:      movl %eax, (%edi)
        addl $0x1000, %eax
        addl $8, %edi
        loop 1b
        movl $PD, %edi
        movl $0x83, %eax            # present, writable, 2 MiB
        xorl %edx, %edx
        movl $2048, %ecx
2:      movl %eax, (%edi)
        movl %edx, 4(%edi)
        addl $0x200000, %eax
        adcl $0, %edx
        addl $8, %edi
        loop 2b
        movl $PML4, %eax
        movl %eax, %cr3
        movl $0xC0000080, %ecx      # EFER
        rdmsr
        orl $0x100, %eax            # LME
        wrmsr
        movl %cr0, %eax
        orl $0x80000000, %eax       # PG: long mode is active
        movl %eax, %cr0
        ljmp $0x18, $start64

        .code64
start64:
        xorps %xmm0, %xmm0
        pcmpeqd %xmm1, %xmm1
        addps %xmm1, %xmm0
        movq $0x200000, %rdi
3:      movq %rdi, (%rdi)
        movaps %xmm0, 16(%rdi)
        addq $0x1000, %rdi
        cmpq $0x1200000, %rdi
        jb 3b
        xorl %eax, %eax
        cpuid
        rdtsc
        movb $MARK, %al
        outb %al, $DEBUG_EXIT
4:      hlt
        jmp 4b

        .balign 8
gdt:    .quad 0
        .quad 0x00CF9A000000FFFF    # 0x08 code, 32-bit flat
        .quad 0x00CF92000000FFFF    # 0x10 data, flat
        .quad 0x00AF9A000000FFFF    # 0x18 code, 64-bit
gdt_end:
gdt_ptr:
        .word gdt_end - gdt - 1
        .long gdt

        .code16
        .org 0xFFF0                 # the reset vector (0xFFFFFFF0)
        jmp start16
        .org 0x10000
