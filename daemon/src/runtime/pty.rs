//! Pseudo-terminals for interactive commands (`nomad alloc exec -t`): the
//! slave becomes the command's stdin, stdout and stderr (and, set up by the
//! command's start, its controlling terminal); the daemon reads and writes
//! the master without blocking and resizes it with `TIOCSWINSZ`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowSize {
    /// Lines.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

impl WindowSize {
    fn to_winsize(self) -> nix::pty::Winsize {
        nix::pty::Winsize {
            ws_row: self.rows,
            ws_col: self.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }
    }
}

/// A freshly opened pty pair.
pub struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

impl Pty {
    /// Opens a pty of `size`. Both ends are close-on-exec, so no other
    /// child of the daemon inherits them (the command gets the slave as
    /// its stdio, which clears the flag on those copies).
    pub fn open(size: WindowSize) -> io::Result<Pty> {
        let pair = nix::pty::openpty(Some(&size.to_winsize()), None)?;
        for fd in [&pair.master, &pair.slave] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        }
        fcntl(
            &pair.master,
            FcntlArg::F_SETFL(OFlag::O_NONBLOCK | OFlag::O_RDWR),
        )?;
        Ok(Pty {
            master: pair.master,
            slave: pair.slave,
        })
    }

    /// A copy of the slave end for one of the command's stdio streams.
    pub fn slave_stdio(&self) -> io::Result<Stdio> {
        Ok(Stdio::from(self.slave.try_clone()?))
    }

    /// The master, once the command has started; the daemon's slave is
    /// closed, so reading ends (EIO) when the command's side is gone.
    pub fn into_master(self) -> io::Result<Master> {
        drop(self.slave);
        // SAFETY: an `OwnedFd` is open and its raw fd never changes while
        // the `AsyncFd` owns it.
        let master = unsafe { AsyncFd::register(self.master) }?;
        Ok(Master(Arc::new(master)))
    }
}

/// The daemon's end of a command's terminal.
pub struct Master(Arc<AsyncFd<OwnedFd>>);

impl Master {
    /// Reads the command's output.
    pub fn reader(&self) -> MasterIo {
        MasterIo(self.0.clone())
    }

    /// Writes the command's input.
    pub fn writer(&self) -> MasterIo {
        MasterIo(self.0.clone())
    }

    /// Tells the terminal (and so the command, with SIGWINCH) its new size.
    pub fn resize(&self, size: WindowSize) -> io::Result<()> {
        let winsize = size.to_winsize();
        // SAFETY: TIOCSWINSZ reads one `winsize` from a valid pointer.
        let rc = unsafe {
            nix::libc::ioctl(
                self.0.get_ref().as_raw_fd(),
                nix::libc::TIOCSWINSZ,
                &winsize as *const nix::pty::Winsize,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Non-blocking reads or writes on the master.
pub struct MasterIo(Arc<AsyncFd<OwnedFd>>);

impl AsyncRead for MasterIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for MasterIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
