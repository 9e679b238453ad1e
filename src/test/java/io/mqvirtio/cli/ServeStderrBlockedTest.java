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
            p.destroy(); // SIGTERM
            assertThat(p.waitFor(30, TimeUnit.SECONDS)).as("exits within 30 s of SIGTERM").isTrue();
            assertThat(p.exitValue()).isZero();
            assertThat(sock).doesNotExist();
        } finally {
            p.destroyForcibly();
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
