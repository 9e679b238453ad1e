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

    private static final int MFD_CLOEXEC = 1;

    private long size;

    private MemFd(int fd) {
        super(fd);
    }

    /** Creates a memfd of {@code size} bytes (zero-filled). */
    public static MemFd create(String name, long size) {
        MemFd m;
        try (Arena a = Arena.ofConfined()) {
            int fd = (int) MEMFD_CREATE.invokeExact(Native.errnoState(), a.allocateFrom(name), MFD_CLOEXEC);
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

    public long size() {
        return size;
    }
}
