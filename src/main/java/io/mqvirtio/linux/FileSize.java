package io.mqvirtio.linux;

import static io.mqvirtio.linux.Native.C_INT;
import static io.mqvirtio.linux.Native.C_LONG;
import static io.mqvirtio.linux.Native.C_POINTER;

import java.lang.foreign.FunctionDescriptor;
import java.lang.invoke.MethodHandle;

/** The size of the file behind a descriptor (lseek to the end): how far a peer's mmap offset may reach. */
public final class FileSize {
    private static final MethodHandle LSEEK =
            Native.downcall("lseek", FunctionDescriptor.of(C_LONG, C_POINTER, C_INT, C_LONG, C_INT));
    private static final int SEEK_END = 2;

    private FileSize() {}

    public static long of(Fd fd) {
        try {
            return Native.check((long) LSEEK.invokeExact(Native.errnoState(), fd.fd(), 0L, SEEK_END), "lseek(SEEK_END)");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }
}
