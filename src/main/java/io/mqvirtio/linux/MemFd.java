package io.mqvirtio.linux;

import static io.mqvirtio.linux.Native.C_INT;
import static io.mqvirtio.linux.Native.C_LONG;
import static io.mqvirtio.linux.Native.C_POINTER;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.invoke.MethodHandle;

/** An anonymous shareable memory file ({@code memfd_create}): how a frontend shares its memory. */
public final class MemFd extends Fd {
    private static final MethodHandle MEMFD_CREATE =
            Native.downcall("memfd_create", FunctionDescriptor.of(C_INT, C_POINTER, C_POINTER, C_INT));
    private static final MethodHandle FTRUNCATE =
            Native.downcall("ftruncate", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_LONG));

    private static final int MFD_CLOEXEC = 1, MFD_ALLOW_SEALING = 2;
    private static final int F_ADD_SEALS = 1033, F_GET_SEALS = 1034;
    /** File seals, <linux/fcntl.h>. */
    public static final int F_SEAL_SEAL = 1, F_SEAL_SHRINK = 2, F_SEAL_GROW = 4, F_SEAL_WRITE = 8;

    private long size;

    private MemFd(int fd) {
        super(fd);
    }

    /** Creates a memfd of {@code size} bytes (zero-filled). */
    public static MemFd create(String name, long size) {
        MemFd m;
        try (Arena a = Arena.ofConfined()) {
            int fd = (int) MEMFD_CREATE.invokeExact(Native.errnoState(), a.allocateFrom(name),
                    MFD_CLOEXEC | MFD_ALLOW_SEALING);
            m = new MemFd(Native.check(fd, "memfd_create"));
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
        try {
            m.truncate(size);
        } catch (RuntimeException e) {
            m.close();
            throw e;
        }
        return m;
    }

    public void truncate(long newSize) {
        try {
            Native.check((int) FTRUNCATE.invokeExact(Native.errnoState(), fd(), newSize), "ftruncate");
            size = newSize;
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /**
     * Fixes the file's size for good (seals SHRINK, GROW and SEAL): whoever it is shared with can no longer truncate
     * it under this process's mappings, which would turn our next access there into a SIGBUS.
     */
    public void sealSize() {
        fcntl(F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL, "fcntl(F_ADD_SEALS)");
    }

    /** The file's seals ({@code F_SEAL_*} bits). */
    public int seals() {
        return fcntl(F_GET_SEALS, 0, "fcntl(F_GET_SEALS)");
    }

    public long size() {
        return size;
    }
}
