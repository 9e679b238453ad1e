package io.mqvirtio.linux;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

@Timeout(10)
class EpollTest {
    private final List<AutoCloseable> open = new ArrayList<>();

    @AfterEach
    void closeAll() throws Exception {
        for (AutoCloseable c : open.reversed()) {
            c.close();
        }
    }

    private <T extends AutoCloseable> T track(T c) {
        open.add(c);
        return c;
    }

    @Test
    void reportsExactlyTheSignalledFdWithItsUserData() {
        Epoll ep = track(Epoll.create(8));
        EventFd[] kicks = new EventFd[5];
        for (int i = 0; i < kicks.length; i++) {
            kicks[i] = track(EventFd.create());
            // user data wider than 32 bits: a packed-struct mistake would mangle the high half
            ep.add(kicks[i], Epoll.EPOLLIN, 0x1234_5678_0000_0000L + i);
        }
        kicks[3].signal();
        assertThat(ep.await(1000)).isEqualTo(1);
        assertThat(ep.data(0)).isEqualTo(0x1234_5678_0000_0003L);
        assertThat(ep.events(0) & Epoll.EPOLLIN).isNotZero();

        kicks[3].drain();
        kicks[0].signal();
        kicks[4].signal();
        int n = ep.await(1000);
        assertThat(n).isEqualTo(2);
        assertThat(List.of(ep.data(0), ep.data(1)))
                .containsExactlyInAnyOrder(0x1234_5678_0000_0000L, 0x1234_5678_0000_0004L);
        assertThatThrownBy(() -> ep.data(2)).isInstanceOf(IndexOutOfBoundsException.class);
    }

    @Test
    void timeoutReturnsZero() {
        Epoll ep = track(Epoll.create(4));
        EventFd e = track(EventFd.create());
        ep.add(e, Epoll.EPOLLIN, 7);
        long start = System.nanoTime();
        assertThat(ep.await(50)).isZero();
        assertThat(System.nanoTime() - start).isGreaterThanOrEqualTo(40_000_000L);
        assertThat(ep.await(0)).isZero();
    }

    @Test
    void capacityBoundsOneWait() {
        Epoll ep = track(Epoll.create(2));
        for (int i = 0; i < 4; i++) {
            EventFd e = track(EventFd.create());
            ep.add(e, Epoll.EPOLLIN, i);
            e.signal();
        }
        assertThat(ep.await(0)).isEqualTo(2);
    }

    @Test
    void modifyChangesUserDataAndRemoveStopsReports() {
        Epoll ep = track(Epoll.create(4));
        EventFd e = track(EventFd.create());
        ep.add(e, Epoll.EPOLLIN, 1);
        ep.modify(e, Epoll.EPOLLIN, 2);
        e.signal();
        assertThat(ep.await(100)).isEqualTo(1);
        assertThat(ep.data(0)).isEqualTo(2);
        ep.remove(e);
        assertThat(ep.await(0)).isZero();
    }

    @Test
    void edgeTriggeredReportsOncePerSignal() {
        Epoll ep = track(Epoll.create(4));
        EventFd e = track(EventFd.create());
        ep.add(e, Epoll.EPOLLIN | Epoll.EPOLLET, 9);
        e.signal();
        assertThat(ep.await(100)).isEqualTo(1);
        assertThat(ep.await(0)).isZero(); // still readable, but no new edge
    }

    @Test
    void errorsNameTheCall() {
        Epoll ep = track(Epoll.create(1));
        EventFd e = track(EventFd.create());
        ep.add(e, Epoll.EPOLLIN, 0);
        assertThatThrownBy(() -> ep.add(e, Epoll.EPOLLIN, 0))
                .isInstanceOfSatisfying(ErrnoException.class, x -> {
                    assertThat(x.call()).isEqualTo("epoll_ctl(EPOLL_CTL_ADD)");
                    assertThat(x.errno()).isEqualTo(ErrnoException.EEXIST);
                });
        assertThatThrownBy(() -> Epoll.create(0)).isInstanceOf(IllegalArgumentException.class);
    }
}
