package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.IoVec;
import io.mqvirtio.linux.NoFileLimit;
import java.util.Arrays;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * A device whose workers cannot all be made for want of a file descriptor (the process at its limit, EMFILE): each
 * worker takes an epoll, a command eventfd and, for a port that asks for upkeep (a TAP's), a timerfd. A failure at
 * any of them, in any worker, used to leak what was made before it: the epoll when the eventfd failed, both when the
 * timerfd failed, and every descriptor of the workers made before (serve then exits, but a library user that tries
 * again, or a session that makes devices, lost them each time). Now the start closes them. The soft RLIMIT_NOFILE is
 * lowered for the start only, leaving exactly 1 to 5 descriptor numbers free.
 */
@Timeout(30)
class WorkerStartOutOfDescriptorsTest {
    @Test
    void aStartThatRunsOutOfDescriptorsClosesWhatItMade() throws Throwable {
        PacketBackend backend = new PacketBackend() {
            @Override
            public int maxPairs() {
                return 2;
            }

            @Override
            public long features() {
                return 0;
            }

            @Override
            public Port open(int pair) {
                return new Port() { // no descriptor of its own; upkeep each second, as a TAP's
                    @Override public int readFd() { return Port.POLL; }
                    @Override public long send(IoVec frame) { return frame.totalBytes(); }
                    @Override public long receive(IoVec into) { return -1; }
                    @Override public long upkeepNanos() { return 1_000_000_000L; }
                    @Override public void close() {}
                };
            }

            @Override
            public String describe() {
                return "no fds";
            }

            @Override
            public void close() {}
        };
        assertThat(catchStart(backend)).as("a start with descriptors to spare (its classes loaded: that takes some)")
                .isNull();
        new ErrnoException("warm-up", ErrnoException.EMFILE).getMessage();
        // 2 workers of 3 descriptors each: with 1 to 5 free, each step of the start fails once
        for (int free = 1; free <= 5; free++) {
            int[] lowest = lowestFree(free);
            long[] limit = NoFileLimit.get();
            Throwable failed;
            try {
                NoFileLimit.set(lowest[free - 1] + 1, limit[1]); // those numbers only
                failed = catchStart(backend);
            } finally {
                NoFileLimit.set(limit[0], limit[1]);
            }
            assertThat(failed).as("%d descriptors free", free).isInstanceOf(ErrnoException.class);
            assertThat(((ErrnoException) failed).errno()).isEqualTo(ErrnoException.EMFILE);
            assertThat(lowestFree(free)).as("with %d free: the descriptors the failed start made, closed", free)
                    .isEqualTo(lowest);
        }
    }

    private static Throwable catchStart(PacketBackend backend) {
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("nofds", 2), backend)) {
            return null;
        } catch (Throwable t) {
            return t;
        }
    }

    /** The {@code n} lowest descriptor numbers free now (each made and closed). */
    private static int[] lowestFree(int n) {
        EventFd[] probes = new EventFd[n];
        int[] fds = new int[n];
        try {
            for (int i = 0; i < n; i++) {
                probes[i] = EventFd.create();
                fds[i] = probes[i].fd();
            }
        } finally {
            Arrays.stream(probes).filter(p -> p != null).forEach(EventFd::close);
        }
        Arrays.sort(fds);
        return fds;
    }
}
