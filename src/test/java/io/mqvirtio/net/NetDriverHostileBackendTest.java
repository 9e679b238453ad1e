package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import io.mqvirtio.linux.UnixSocket;
import io.mqvirtio.vhostuser.Channel;
import io.mqvirtio.vhostuser.Message;
import io.mqvirtio.vhostuser.Protocol;
import io.mqvirtio.vhostuser.Request;
import io.mqvirtio.vhostuser.VhostUserException;
import io.mqvirtio.virtio.VirtioFeatures;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.function.BiFunction;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Backends that misbehave: each gives the driver's caller a clear {@link VhostUserException}, leaves no thread
 * waiting and no descriptor open.
 */
class NetDriverHostileBackendTest {
    static final long GOOD_FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ)
            | (1L << Protocol.F_PROTOCOL_FEATURES);
    static final long GOOD_PROTOCOL = (1L << Protocol.PF_MQ) | (1L << Protocol.PF_REPLY_ACK);

    @TempDir
    Path dir;

    /**
     * A backend that answers every request sensibly except where {@code twist} returns a different action:
     * null = behave, "close" = drop the connection, "silent" = never answer, anything else = raw reply bytes.
     */
    private void hostile(BiFunction<Message, Integer, Object> twist, String expected) throws Exception {
        Path sock = dir.resolve("evil.sock");
        long fdsBefore = openFds();
        try (UnixSocket listener = UnixSocket.listen(sock, 1)) {
            Thread backend = Thread.ofPlatform().daemon().start(() -> {
                try (Channel ch = new Channel(listener.accept())) {
                    int n = 0;
                    while (true) {
                        Message received = ch.receive();
                        if (received == null) {
                            break;
                        }
                        try (Message m = received) {
                            Object act = twist.apply(m, n++);
                            if ("close".equals(act)) {
                                return;
                            }
                            if ("silent".equals(act)) {
                                Thread.sleep(3000);
                                return;
                            }
                            if (act instanceof byte[] raw) {
                                ch.send(m.requestId(), Protocol.FLAG_REPLY, raw);
                                continue;
                            }
                            behave(ch, m);
                        }
                    }
                } catch (Exception e) {
                    // the driver hung up: fine
                }
            });
            NetDriver.Options o = new NetDriver.Options(2, 64, 2048, 1000, NetDriver.WANTED);
            assertThatThrownBy(() -> NetDriver.connect(sock, o)).isInstanceOf(VhostUserException.class)
                    .hasMessageContaining(expected);
            backend.join(5000);
            assertThat(backend.isAlive()).isFalse();
        }
        Files.deleteIfExists(sock);
        assertThat(openFds()).as("descriptors after a failed connect").isEqualTo(fdsBefore);
    }

    private static void behave(Channel ch, Message m) {
        Request r = m.request();
        byte[] reply = switch (r) {
            case GET_FEATURES -> Message.u64Payload(GOOD_FEATURES);
            case GET_PROTOCOL_FEATURES -> Message.u64Payload(GOOD_PROTOCOL);
            case GET_QUEUE_NUM -> Message.u64Payload(4);
            case GET_VRING_BASE -> Message.vringState(m.u32(0), 0);
            default -> m.needsReply() ? Message.u64Payload(0) : null;
        };
        if (reply != null) {
            ch.send(m.requestId(), Protocol.FLAG_REPLY, reply);
        }
    }

    private static long openFds() throws IOException {
        try (Stream<Path> s = Files.list(Path.of("/proc/self/fd"))) {
            return s.count();
        }
    }

    @Test
    @Timeout(30)
    void backendWithoutVersion1() throws Exception {
        hostile((m, n) -> m.request() == Request.GET_FEATURES ? Message.u64Payload(1L << Protocol.F_PROTOCOL_FEATURES) : null,
                "does not offer VERSION_1");
    }

    @Test
    @Timeout(30)
    void replyOfTheWrongSize() throws Exception {
        hostile((m, n) -> m.request() == Request.GET_FEATURES ? new byte[4] : null, "reply has 4 bytes, expected 8");
    }

    @Test
    @Timeout(30)
    void connectionDroppedMidSetup() throws Exception {
        hostile((m, n) -> m.request() == Request.SET_MEM_TABLE ? "close" : null, "closed the connection");
    }

    @Test
    @Timeout(30)
    void backendThatNeverAnswers() throws Exception {
        hostile((m, n) -> m.request() == Request.GET_QUEUE_NUM ? "silent" : null, "no reply from the backend within 1000 ms");
    }

    @Test
    @Timeout(30)
    void refusedRequest() throws Exception {
        hostile((m, n) -> m.request() == Request.SET_MEM_TABLE ? Message.u64Payload(1) : null,
                "SET_MEM_TABLE was refused by the backend");
    }

    @Test
    @Timeout(30)
    void tooFewQueuePairs() throws Exception {
        hostile((m, n) -> m.request() == Request.GET_QUEUE_NUM ? Message.u64Payload(1) : null,
                "serves 1 queue pair, 2 asked");
    }

    @Test
    @Timeout(30)
    void absurdQueueCount() throws Exception {
        hostile((m, n) -> m.request() == Request.GET_QUEUE_NUM ? Message.u64Payload(-1) : null, "GET_QUEUE_NUM answered");
    }

    @Test
    @Timeout(30)
    void replyToAnotherRequest() throws Exception {
        Path sock = dir.resolve("evil2.sock");
        try (UnixSocket listener = UnixSocket.listen(sock, 1)) {
            Thread.ofPlatform().daemon().start(() -> {
                try (Channel ch = new Channel(listener.accept()); Message m = ch.receive()) {
                    ch.send(Request.GET_QUEUE_NUM.id, Protocol.FLAG_REPLY, Message.u64Payload(4));
                    Thread.sleep(2000);
                } catch (Exception ignored) {
                    // done
                }
            });
            assertThatThrownBy(() -> NetDriver.connect(sock, NetDriver.Options.pairs(1)))
                    .isInstanceOf(VhostUserException.class).hasMessageContaining("GET_FEATURES: the backend answered with GET_QUEUE_NUM");
        }
    }

    @Test
    @Timeout(30)
    void noBackendAtAll() {
        assertThatThrownBy(() -> NetDriver.connect(dir.resolve("nobody.sock"), NetDriver.Options.pairs(1)))
                .isInstanceOf(VhostUserException.class).hasMessageContaining("cannot connect");
    }
}
