package io.mqvirtio.cli;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.net.NetDriver;
import io.mqvirtio.net.NetQueuePair;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code serve} whose standard error nobody reads (a pipe whose reader stalls, a journal that stops taking lines):
 * once the pipe is full, logging must not hold the threads that log. Frontends keep connecting and being served
 * (each session logs a dozen lines at --debug), frames keep flowing, and SIGTERM still ends it with status 0 and
 * its socket removed. With stderr written on the logging thread, the session thread stopped at the first line
 * after the pipe filled, and the next frontend was never answered.
 */
class ServeStderrBlockedTest {
    @TempDir
    Path dir;

    @Test
    @Timeout(180)
    void aStderrNobodyReadsHoldsNoVm() throws Exception {
        Path sock = dir.resolve("vm.sock");
        ProcessBuilder pb = new ProcessBuilder(Launcher.command("serve", "--socket-path", sock.toString(), "--queues",
                "1", "--loopback", "--debug"));
        pb.redirectOutput(ProcessBuilder.Redirect.DISCARD);
        pb.redirectError(ProcessBuilder.Redirect.PIPE); // never read: full after 64 KiB
        Process p = pb.start();
        try (Arena a = Arena.ofConfined()) {
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            while (!Files.exists(sock)) {
                assertThat(p.isAlive()).as("serve is running").isTrue();
                assertThat(System.nanoTime()).as("the socket within 30 s").isLessThan(deadline);
                Thread.sleep(50);
            }
            Thread.sleep(200); // listening: the file appears at bind, before listen
            // about 1.5 KiB of log per session at --debug: 120 sessions are more than the pipe holds, twice over
            for (int i = 0; i < 120; i++) {
                try (NetDriver nic = NetDriver.connect(sock, NetDriver.Options.pairs(1))) {
                    if (i % 30 == 29) {
                        assertEchoes(nic.pair(0), a, i);
                    }
                }
            }
            // SIGTERM through the handle: Process.destroy would also close our end of the pipe, unblocking serve's
            // writes, and the stop would not be tested with stderr still full
            p.toHandle().destroy();
            assertThat(p.waitFor(30, TimeUnit.SECONDS)).as("exits within 30 s of SIGTERM, stderr still full").isTrue();
            assertThat(p.exitValue()).isZero();
            assertThat(sock).doesNotExist();
        } finally {
            p.destroyForcibly();
        }
    }

    /**
     * A second SIGTERM while serve stops (which waits for its log lines a bounded time: 2 s with stderr blocked) is
     * the user insisting: serve exits at once, status 1, whatever its stderr does. Its line about it was printed on
     * the signal's thread before the halt, and with the pipe full that print never returned: serve went on stopping
     * for seconds and exited 0, as if the second signal had not come.
     */
    @Test
    @Timeout(60)
    void aSecondSigtermExitsAtOnceWithStderrFull() throws Exception {
        Path sock = dir.resolve("vm.sock");
        ProcessBuilder pb = new ProcessBuilder(Launcher.command("serve", "--socket-path", sock.toString(), "--queues",
                "1", "--loopback"));
        pb.redirectOutput(ProcessBuilder.Redirect.DISCARD);
        pb.redirectError(ProcessBuilder.Redirect.PIPE); // never read
        Process p = pb.start();
        Thread filler = null;
        try {
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            while (!Files.exists(sock)) {
                assertThat(p.isAlive()).as("serve is running").isTrue();
                assertThat(System.nanoTime()).as("the socket within 30 s").isLessThan(deadline);
                Thread.sleep(50);
            }
            Thread.sleep(200);
            // fill serve's stderr pipe through its own descriptor: the next line serve writes waits for good
            java.util.concurrent.atomic.AtomicLong filled = new java.util.concurrent.atomic.AtomicLong();
            java.io.OutputStream pipe = Files.newOutputStream(Path.of("/proc/" + p.pid() + "/fd/2"));
            filler = Thread.ofPlatform().daemon().start(() -> {
                try (pipe) {
                    while (true) {
                        pipe.write('.'); // a byte at a time: a larger write waits for room for all of it (PIPE_BUF)
                        filled.incrementAndGet();
                    }
                } catch (java.io.IOException e) {
                    // the pipe's reader is gone: the test is over
                }
            });
            long last = -1;
            while (filled.get() != last || last == 0) {
                last = filled.get();
                Thread.sleep(200);
            }
            // SIGTERM through the handle: Process.destroy also closes our end of the pipe, which would unblock it
            p.toHandle().destroy(); // serve stops, and its "stopping" line waits for the pipe
            Thread.sleep(500);
            assertThat(p.isAlive()).as("serve still stopping (its logs waited for)").isTrue();
            long t0 = System.nanoTime();
            p.toHandle().destroy(); // SIGTERM again
            assertThat(p.waitFor(1500, TimeUnit.MILLISECONDS)).as("exits within 1.5 s of the second SIGTERM").isTrue();
            assertThat(p.exitValue()).as("status of the second signal's exit").isEqualTo(1);
            assertThat((System.nanoTime() - t0) / 1_000_000).as("ms to exit").isLessThan(1500);
        } finally {
            p.destroyForcibly();
            p.waitFor(10, TimeUnit.SECONDS);
            p.getErrorStream().close(); // ends the filler's write
            if (filler != null) {
                filler.join(5000);
            }
        }
    }

    private static void assertEchoes(NetQueuePair q, Arena a, int session) throws InterruptedException {
        MemorySegment f = a.allocate(200);
        f.fill((byte) session);
        f.set(java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED, 12, (short) 0x0008); // IPv4, big-endian 0x0800
        MemorySegment[] bufs = {a.allocate(2048)};
        int[] lens = new int[1];
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        boolean sent = false;
        int got = 0;
        while (got == 0 && System.nanoTime() < deadline) {
            if (!sent) {
                sent = q.send(f) == 1;
            }
            got = q.receive(bufs, lens, 1);
            Thread.sleep(1);
        }
        assertThat(got).as("session %d: a frame echoed", session).isEqualTo(1);
        assertThat(bufs[0].asSlice(0, 200).mismatch(f)).isEqualTo(-1);
    }
}
