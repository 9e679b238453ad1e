package io.mqvirtio.cli;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.Flow;

/**
 * A response body of at most {@code max} bytes, for a client that reads an endpoint it does not trust ({@code mqvirtio
 * stats --from} names an address, and whatever listens there answers). The JDK's {@code BodyHandlers.ofString} keeps
 * every byte until the server closes, and the request's timeout stops counting once the response head is in: a
 * server that sent a head and then an endless body took the client's heap until it ran out (with 256 MiB of heap, the
 * client's HTTP selector thread died of OutOfMemoryError within 3 s on JDK 25; JDK 17's client then hung). Here the body fails with an {@link IOException} as soon as it is
 * longer than {@code max}, and the subscription is cancelled, which ends the exchange. Its time is bounded by the
 * caller (see {@link Stats#fetch}).
 */
final class BoundedBody implements HttpResponse.BodySubscriber<byte[]> {
    private final int max;
    private final ByteArrayOutputStream got = new ByteArrayOutputStream();
    private final CompletableFuture<byte[]> result = new CompletableFuture<>();
    private Flow.Subscription subscription;

    private BoundedBody(int max) {
        this.max = max;
    }

    /** A handler whose bodies are at most {@code max} bytes, whatever the response's head says. */
    static HttpResponse.BodyHandler<byte[]> handler(int max) {
        return info -> new BoundedBody(max);
    }

    @Override
    public void onSubscribe(Flow.Subscription s) {
        subscription = s;
        s.request(1);
    }

    @Override
    public void onNext(List<ByteBuffer> items) {
        if (result.isDone()) {
            return;
        }
        for (ByteBuffer b : items) {
            if (b.remaining() > max - got.size()) {
                subscription.cancel();
                result.completeExceptionally(new IOException("the reply is longer than " + max + " bytes"));
                return;
            }
            byte[] a = new byte[b.remaining()];
            b.get(a);
            got.writeBytes(a);
        }
        subscription.request(1);
    }

    @Override
    public void onError(Throwable t) {
        result.completeExceptionally(t);
    }

    @Override
    public void onComplete() {
        result.complete(got.toByteArray());
    }

    @Override
    public CompletionStage<byte[]> getBody() {
        return result;
    }
}
