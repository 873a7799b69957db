//! Futures without an executor dependency: the boxed future types of reads and model calls,
//! the `Send`/`Sync` bounds that hold natively but not in a browser, and [`block_on`] for
//! native code's top level.
//!
//! Reads from a device are futures ([`crate::Backend::read`]) because a browser's WebGPU can
//! only map a buffer asynchronously. Model code awaits them; native entry points (the CLI, the
//! server's worker threads, tests) wait with [`block_on`], the browser build with the page's
//! event loop. The futures are not `Send`: they are awaited on the thread that made them.

use crate::error::Result;
use std::future::Future;
use std::pin::Pin;

/// A boxed future awaited on the thread that made it.
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// The values of a [`crate::Backend::read`].
pub type ReadFuture = LocalBoxFuture<'static, Result<Vec<f32>>>;

/// A future that is ready at once with `value`.
pub fn ready<'a, T: 'a>(value: T) -> LocalBoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

/// `Send` natively; nothing on wasm32, where the browser's WebGPU objects live on one thread.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + ?Sized> MaybeSend for T {}
/// `Send` natively; nothing on wasm32, where the browser's WebGPU objects live on one thread.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSend {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSend for T {}

/// `Sync` natively; nothing on wasm32.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSync: Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Sync + ?Sized> MaybeSync for T {}
/// `Sync` natively; nothing on wasm32.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSync {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSync for T {}

/// Runs `fut` to completion on this thread, parking between polls. Native code's top level
/// only: a browser build awaits instead.
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: Future>(fut: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn block_on_waits_for_a_wake_from_another_thread() {
        use std::sync::{Arc, Mutex};
        use std::task::{Poll, Waker};
        // A future that is pending until another thread sets its value and wakes it.
        let slot: Arc<Mutex<(Option<u32>, Option<Waker>)>> = Arc::default();
        let s = slot.clone();
        let fut = std::future::poll_fn(move |cx| {
            let mut g = s.lock().unwrap();
            match g.0 {
                Some(v) => Poll::Ready(v),
                None => {
                    g.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        });
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let mut g = slot.lock().unwrap();
            g.0 = Some(7);
            if let Some(w) = g.1.take() {
                w.wake();
            }
        });
        assert_eq!(block_on(fut), 7);
        t.join().unwrap();
    }
}
