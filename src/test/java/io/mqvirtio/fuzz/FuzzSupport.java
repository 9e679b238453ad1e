package io.mqvirtio.fuzz;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.logging.Level;
import java.util.logging.LogManager;
import java.util.logging.Logger;

/** What the fuzz targets share: silence, descriptor and mapping accounting, and a half-close of a socket. */
final class FuzzSupport {
    private static final Linker LINKER = Linker.nativeLinker();
    private static final MethodHandle SHUTDOWN = LINKER.downcallHandle(LINKER.defaultLookup().find("shutdown").orElseThrow(),
            FunctionDescriptor.of(ValueLayout.JAVA_INT, ValueLayout.JAVA_INT, ValueLayout.JAVA_INT));
    private static final MethodHandle FCNTL = LINKER.downcallHandle(LINKER.defaultLookup().find("fcntl").orElseThrow(),
            FunctionDescriptor.of(ValueLayout.JAVA_INT, ValueLayout.JAVA_INT, ValueLayout.JAVA_INT, ValueLayout.JAVA_INT),
            Linker.Option.firstVariadicArg(2));
    private static final int SHUT_WR = 1;
    private static final int F_GETFD = 1;

    private FuzzSupport() {}

    /** The code under test logs every refusal; millions of inputs must not go to stderr. */
    static void quietLogging() {
        LogManager.getLogManager().reset();
        Logger.getLogger("").setLevel(Level.OFF);
    }

    /** shutdown(SHUT_WR): the peer reads end of stream after what was sent, and can still answer. */
    static void shutdownWrite(int fd) {
        try {
            int r = (int) SHUTDOWN.invokeExact(fd, SHUT_WR);
            if (r != 0) {
                throw new IllegalStateException("shutdown(" + fd + ", SHUT_WR) failed");
            }
        } catch (Throwable t) {
            throw t instanceof RuntimeException e ? e : new IllegalStateException(t);
        }
    }

    /** Whether descriptor {@code fd} is open in this process (fcntl(F_GETFD) succeeds). */
    static boolean isOpen(int fd) {
        try {
            return (int) FCNTL.invokeExact(fd, F_GETFD, 0) >= 0;
        } catch (Throwable t) {
            throw new IllegalStateException(t);
        }
    }

    /**
     * The open descriptors among 0..{@code limit}-1, as a bit set: one fcntl each, cheap enough to take before and
     * after every input (a directory listing of /proc/self/fd costs far more).
     */
    static long[] openFds(int limit) {
        long[] bits = new long[(limit + 63) / 64];
        for (int fd = 0; fd < limit; fd++) {
            if (isOpen(fd)) {
                bits[fd >>> 6] |= 1L << fd;
            }
        }
        return bits;
    }

    /** The descriptors open in {@code after} but not in {@code before}, with what /proc says they are. */
    static List<String> leaked(long[] before, long[] after) {
        List<String> l = new ArrayList<>();
        for (int i = 0; i < after.length; i++) {
            long extra = after[i] & ~before[i];
            while (extra != 0) {
                int fd = i * 64 + Long.numberOfTrailingZeros(extra);
                extra &= extra - 1;
                String what;
                try {
                    what = Files.readSymbolicLink(Path.of("/proc/self/fd/" + fd)).toString();
                } catch (IOException e) {
                    what = "?";
                }
                l.add(fd + " -> " + what);
            }
        }
        return l;
    }

    /** Every open descriptor, from /proc/self/fd: the authoritative count, for the checks between runs. */
    static int fdCount() {
        try (var s = Files.list(Path.of("/proc/self/fd"))) {
            return (int) s.count() - 1; // the listing's own descriptor
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** Mappings of memfds in this process whose name starts with {@code prefix} ({@code /proc/self/maps}). */
    static long memfdMappings(String prefix) {
        try {
            return Files.readAllLines(Path.of("/proc/self/maps")).stream().filter(l -> l.contains("/memfd:" + prefix)).count();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** Total virtual size of this process (first field of /proc/self/statm, in pages): moves when anything is mapped. */
    static long virtualPages() {
        try {
            String s = Files.readString(Path.of("/proc/self/statm"));
            return Long.parseLong(s.substring(0, s.indexOf(' ')));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}
