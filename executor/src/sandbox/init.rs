//! The sandbox's PID 1: a tiny static program, exec'd by the sandbox's init process once its
//! setup is done, so that what a guest sees as PID 1 (`/proc/1/cmdline`, `environ`, `exe`, its
//! memory) is this program (argv `init`, no environment, `/memfd:init`) and nothing of the node
//! it was forked from.
//!
//! Why a hand-assembled image rather than a re-exec of the node's binary: the executor is a
//! library (the node's binary and every test binary would need an init-mode hook before
//! `main`), a re-exec would expose the binary's host path as `/proc/1/exe` unless it were
//! copied into a memfd (tens of MB per node), and exec'ing a large dynamically linked binary
//! costs milliseconds per run. This image is 341 bytes of code, loaded from a sealed memfd made
//! once per node; its exec costs what an exec costs.
//!
//! What it does (its only inputs are three fds its parent arranges):
//! - fd 4: one native-endian 32-bit word, then EOF. 0: a workstation's reaper. Otherwise the
//!   pid (in the sandbox's PID namespace) of the run's program, which waits for the gate.
//! - fd 3: the report pipe. A reaper writes `REPORT_READY` and closes it, then reaps orphans
//!   forever (SIGCHLD blocked, `rt_sigtimedwait`, `wait4(WNOHANG|__WALL)`). A run's init writes
//!   one byte to fd 5 (the gate: the program may exec its user code now that PID 1 is clean),
//!   reaps until the program's own status arrives, writes `REPORT_EXITED` with it and exits,
//!   which kills whatever else is left in the PID namespace.
//! - Any unexpected answer from the kernel: exit 1 (the parent then sees no report).
//!
//! The x86_64 machine code below is the GNU `as --64` assembly of:
//!
//     .globl _start
//     .text
// _start:
//     sub   $64, %rsp
//     xor   %eax, %eax
//     mov   $4, %edi
//     mov   %rsp, %rsi
//     mov   $4, %edx
//     syscall
//     cmp   $4, %rax
//     jne   fail
//     mov   $3, %eax
//     mov   $4, %edi
//     syscall
//     mov   (%rsp), %r12d
//     test  %r12d, %r12d
//     jz    reaper
//     mov   $1, %eax
//     mov   $5, %edi
//     mov   %rsp, %rsi
//     mov   $1, %edx
//     syscall
//     cmp   $1, %rax
//     jne   fail
//     mov   $3, %eax
//     mov   $5, %edi
//     syscall
// wait_program:
//     mov   $61, %eax
//     mov   $-1, %edi
//     lea   8(%rsp), %rsi
//     mov   $0x40000000, %edx
//     xor   %r10d, %r10d
//     syscall
//     cmp   %r12d, %eax
//     je    exited
//     test  %rax, %rax
//     jns   wait_program
//     cmp   $-4, %rax
//     je    wait_program
//     jmp   fail
// exited:
//     movl  $3, 4(%rsp)
//     movl  $0, 12(%rsp)
//     mov   $1, %eax
//     mov   $3, %edi
//     lea   4(%rsp), %rsi
//     mov   $12, %edx
//     syscall
//     xor   %edi, %edi
//     jmp   exit
// reaper:
//     movl  $5, 4(%rsp)
//     movl  $1, 8(%rsp)
//     movl  $0, 12(%rsp)
//     mov   $1, %eax
//     mov   $3, %edi
//     lea   4(%rsp), %rsi
//     mov   $12, %edx
//     syscall
//     mov   $3, %eax
//     mov   $3, %edi
//     syscall
//     movq  $0x10000, 16(%rsp)
//     mov   $14, %eax
//     xor   %edi, %edi
//     lea   16(%rsp), %rsi
//     xor   %edx, %edx
//     mov   $8, %r10d
//     syscall
// reap_wait:
//     mov   $128, %eax
//     lea   16(%rsp), %rdi
//     xor   %esi, %esi
//     xor   %edx, %edx
//     mov   $8, %r10d
//     syscall
// reap_all:
//     mov   $61, %eax
//     mov   $-1, %edi
//     xor   %esi, %esi
//     mov   $0x40000001, %edx
//     xor   %r10d, %r10d
//     syscall
//     test  %rax, %rax
//     jg    reap_all
//     jmp   reap_wait
// fail:
//     mov   $1, %edi
// exit:
//     mov   $231, %eax
//     syscall

use std::os::fd::{FromRawFd, OwnedFd};

/// The machine code of the program (x86_64), see the module comment.
#[cfg(target_arch = "x86_64")]
const CODE: [u8; 341] = [
    0x48, 0x83, 0xec, 0x40, 0x31, 0xc0, 0xbf, 0x04, 0x00, 0x00, 0x00, 0x48, 0x89, 0xe6, 0xba, 0x04,
    0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x83, 0xf8, 0x04, 0x0f, 0x85, 0x2a, 0x01, 0x00, 0x00, 0xb8,
    0x03, 0x00, 0x00, 0x00, 0xbf, 0x04, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x44, 0x8b, 0x24, 0x24, 0x45,
    0x85, 0xe4, 0x0f, 0x84, 0x85, 0x00, 0x00, 0x00, 0xb8, 0x01, 0x00, 0x00, 0x00, 0xbf, 0x05, 0x00,
    0x00, 0x00, 0x48, 0x89, 0xe6, 0xba, 0x01, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x83, 0xf8, 0x01,
    0x0f, 0x85, 0xf3, 0x00, 0x00, 0x00, 0xb8, 0x03, 0x00, 0x00, 0x00, 0xbf, 0x05, 0x00, 0x00, 0x00,
    0x0f, 0x05, 0xb8, 0x3d, 0x00, 0x00, 0x00, 0xbf, 0xff, 0xff, 0xff, 0xff, 0x48, 0x8d, 0x74, 0x24,
    0x08, 0xba, 0x00, 0x00, 0x00, 0x40, 0x45, 0x31, 0xd2, 0x0f, 0x05, 0x44, 0x39, 0xe0, 0x74, 0x10,
    0x48, 0x85, 0xc0, 0x79, 0xdd, 0x48, 0x83, 0xf8, 0xfc, 0x74, 0xd7, 0xe9, 0xb9, 0x00, 0x00, 0x00,
    0xc7, 0x44, 0x24, 0x04, 0x03, 0x00, 0x00, 0x00, 0xc7, 0x44, 0x24, 0x0c, 0x00, 0x00, 0x00, 0x00,
    0xb8, 0x01, 0x00, 0x00, 0x00, 0xbf, 0x03, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x74, 0x24, 0x04, 0xba,
    0x0c, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x31, 0xff, 0xe9, 0x91, 0x00, 0x00, 0x00, 0xc7, 0x44, 0x24,
    0x04, 0x05, 0x00, 0x00, 0x00, 0xc7, 0x44, 0x24, 0x08, 0x01, 0x00, 0x00, 0x00, 0xc7, 0x44, 0x24,
    0x0c, 0x00, 0x00, 0x00, 0x00, 0xb8, 0x01, 0x00, 0x00, 0x00, 0xbf, 0x03, 0x00, 0x00, 0x00, 0x48,
    0x8d, 0x74, 0x24, 0x04, 0xba, 0x0c, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xb8, 0x03, 0x00, 0x00, 0x00,
    0xbf, 0x03, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0xc7, 0x44, 0x24, 0x10, 0x00, 0x00, 0x01, 0x00,
    0xb8, 0x0e, 0x00, 0x00, 0x00, 0x31, 0xff, 0x48, 0x8d, 0x74, 0x24, 0x10, 0x31, 0xd2, 0x41, 0xba,
    0x08, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xb8, 0x80, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x7c, 0x24, 0x10,
    0x31, 0xf6, 0x31, 0xd2, 0x41, 0xba, 0x08, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xb8, 0x3d, 0x00, 0x00,
    0x00, 0xbf, 0xff, 0xff, 0xff, 0xff, 0x31, 0xf6, 0xba, 0x01, 0x00, 0x00, 0x40, 0x45, 0x31, 0xd2,
    0x0f, 0x05, 0x48, 0x85, 0xc0, 0x7f, 0xe5, 0xeb, 0xcd, 0xbf, 0x01, 0x00, 0x00, 0x00, 0xb8, 0xe7,
    0x00, 0x00, 0x00, 0x0f, 0x05,
];

/// Where the image is loaded (a conventional non-PIE base; the image is static).
#[cfg(target_arch = "x86_64")]
const LOAD_ADDRESS: u64 = 0x40_0000;
const ELF_HEADER_BYTES: usize = 64;
const PROGRAM_HEADER_BYTES: usize = 56;
const N_PROGRAM_HEADERS: usize = 2;

/// The ELF file: header, a PT_LOAD of the whole file (read + execute) and a PT_GNU_STACK
/// (read + write, not executable), then the code.
#[cfg(target_arch = "x86_64")]
pub(crate) fn image() -> Vec<u8> {
    let code_offset = ELF_HEADER_BYTES + N_PROGRAM_HEADERS * PROGRAM_HEADER_BYTES;
    let file_bytes = (code_offset + CODE.len()) as u64;
    let mut elf = Vec::with_capacity(file_bytes as usize);
    // e_ident: ELF, 64-bit, little-endian, version 1, System V ABI, padding.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(LOAD_ADDRESS + code_offset as u64).to_le_bytes()); // e_entry
    elf.extend_from_slice(&(ELF_HEADER_BYTES as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(ELF_HEADER_BYTES as u16).to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&(PROGRAM_HEADER_BYTES as u16).to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&(N_PROGRAM_HEADERS as u16).to_le_bytes()); // e_phnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
                                                // PT_LOAD, flags R|X, the whole file at LOAD_ADDRESS.
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&5u32.to_le_bytes());
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&file_bytes.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&file_bytes.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
                                                     // PT_GNU_STACK, flags R|W.
    elf.extend_from_slice(&0x6474_e551u32.to_le_bytes());
    elf.extend_from_slice(&6u32.to_le_bytes());
    elf.extend_from_slice(&[0; 40]);
    elf.extend_from_slice(&16u64.to_le_bytes()); // p_align
    elf.extend_from_slice(&CODE);
    elf
}

/// No image for other architectures: their sandboxes keep the forked init (see
/// [`memfd`]'s callers).
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn image() -> Vec<u8> {
    Vec::new()
}

/// The image in a sealed, close-on-exec memfd named `init` (so `/proc/1/exe` reads
/// `/memfd:init (deleted)`). Err names why not (no image for this architecture, or the kernel
/// refuses executable memfds: `vm.memfd_noexec = 2`).
pub(crate) fn memfd() -> Result<OwnedFd, String> {
    let image = image();
    if image.is_empty() {
        return Err("no sandbox init image for this architecture".to_string());
    }
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // MFD_EXEC (Linux 6.3) says outright that the memfd is meant to be executed; older
    // kernels refuse the unknown flag, and need none.
    const MFD_EXEC: libc::c_uint = 0x10;
    // SAFETY: memfd_create with a static name; the fd is checked and owned below.
    let mut fd = unsafe { libc::memfd_create(c"init".as_ptr(), flags | MFD_EXEC) };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(c"init".as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the fd was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(fd);
    use std::io::Write;
    (&file)
        .write_all(&image)
        .map_err(|error| format!("write the init image: {error}"))?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on an fd we own.
    if unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::F_ADD_SEALS,
            seals,
        )
    } != 0
    {
        return Err(format!(
            "seal the init image: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(OwnedFd::from(file))
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn image_is_one_loadable_elf_file_with_the_entry_at_the_code() {
        let image = image();
        assert_eq!(&image[..4], b"\x7fELF");
        let entry = u64::from_le_bytes(image[24..32].try_into().unwrap_or_default());
        let code_offset = (ELF_HEADER_BYTES + N_PROGRAM_HEADERS * PROGRAM_HEADER_BYTES) as u64;
        assert_eq!(entry, LOAD_ADDRESS + code_offset);
        assert_eq!(image.len() as u64, code_offset + CODE.len() as u64);
        let file_bytes = u64::from_le_bytes(image[96..104].try_into().unwrap_or_default());
        assert_eq!(file_bytes, image.len() as u64);
    }
}
