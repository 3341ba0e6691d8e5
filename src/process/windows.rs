//! Windows process control: each child in a job object of its own (the whole tree, killed
//! together), `CTRL_BREAK_EVENT` to its console process group as the graceful stop, and
//! plain blocking pipe reads.
//!
//! What a Windows child sees, in order:
//!
//! 1. It starts with `CREATE_NEW_PROCESS_GROUP`: it leads a new console process group, and
//!    Ctrl-C typed at the console is disabled for it (as on unix, where the child is not in
//!    the terminal's foreground group). Its descendants join that group unless they ask for
//!    a new one. It is created suspended and put into a job object before its first
//!    instruction, so everything it starts is in the job too: the job does not allow
//!    breakaway (`CREATE_BREAKAWAY_FROM_JOB` fails with "access denied").
//! 2. Graceful stop (cancel, timeout, shutdown, leftovers after the leader exited):
//!    `GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pid)`. Every process of the group that
//!    shares runstream's console gets `CTRL_BREAK_EVENT` in its console control handler
//!    (Python: `signal.SIGBREAK`). Without a handler, the default one exits the process
//!    with code `0xC000013A` (`STATUS_CONTROL_C_EXIT`, -1073741510). Processes that started
//!    a group of their own, or have no console or another one (`DETACHED_PROCESS`,
//!    `CREATE_NEW_CONSOLE`), do not get it. When runstream itself has no console (a
//!    service, a GUI program embedding the library), the event cannot be sent at all: the
//!    run's log says so, and the grace period still ends in step 3.
//! 3. When the grace period ends (or at once for a kill): `TerminateJobObject(job, 1)`.
//!    Every process in the job dies with exit code 1 — the code `Child::kill` uses too.
//!
//! The job is created with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE` and its only handle is
//! runstream's, not inheritable: when runstream exits for whatever reason, crash included,
//! Windows closes that handle and kills the whole tree. So no run outlives runstream on
//! Windows, and there is nothing for crash recovery to clean up after a restart.
//!
//! There are no signals: an exit status has a code and never a signal.

use std::ffi::{c_void, OsString};
use std::io::{self, Read};
use std::mem::{offset_of, size_of};
use std::os::windows::ffi::OsStringExt;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};
use std::os::windows::process::CommandExt;
use std::path::Path;
use std::process::ExitStatus;
use std::ptr;
use std::sync::Arc;

use os_pipe::PipeReader;
use shared_child::SharedChild;
use windows_sys::Win32::Foundation::{CloseHandle, ERROR_MORE_DATA, HANDLE, WAIT_TIMEOUT};
use windows_sys::Win32::System::Console::{
    GenerateConsoleCtrlEvent, GetConsoleProcessList, CTRL_BREAK_EVENT,
};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, Thread32First, Thread32Next, TH32CS_SNAPTHREAD, THREADENTRY32,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, IsProcessInJob, JobObjectBasicProcessIdList,
    JobObjectExtendedLimitInformation, QueryInformationJobObject, SetInformationJobObject,
    TerminateJobObject, JOBOBJECT_BASIC_PROCESS_ID_LIST, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};
use windows_sys::Win32::System::Threading::{
    OpenProcess, OpenThread, QueryFullProcessImageNameW, ResumeThread, WaitForSingleObject,
    CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW, CREATE_SUSPENDED, PROCESS_NAME_WIN32,
    PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SYNCHRONIZE, THREAD_SUSPEND_RESUME,
};

use super::{prepare, PreparedCommand, Signal, Spawned};
use crate::spawn_error::SpawnError;
use crate::spec::RunSpec;

/// The exit code of every process of a job the engine terminates (as `Child::kill`).
const KILLED_EXIT_CODE: u32 = 1;

/// Spawns `spec` as the leader of a new console process group, inside a new job object,
/// stdin null, stdout and stderr on two pipes. Errors are worded for a person.
pub(crate) fn spawn(spec: &RunSpec) -> Result<Spawned, SpawnError> {
    let job = Job::new().map_err(|e| format!("could not create a job object: {e}"))?;
    let PreparedCommand {
        mut command,
        stdout,
        stderr,
    } = prepare(spec)?;
    // Suspended until it is in the job: a child that started a grandchild before being
    // assigned would leave that grandchild outside.
    let mut flags = CREATE_NEW_PROCESS_GROUP | CREATE_SUSPENDED;
    if !has_console() {
        // Without a console of ours, a console program would get a new console *window*.
        flags |= CREATE_NO_WINDOW;
    }
    command.creation_flags(flags);
    let mut child = command
        .spawn()
        .map_err(|e| SpawnError::from_spawn(spec, e))?;
    // The Command holds our copies of the pipes' write ends: while they live, the readers
    // never see EOF. Drop it now.
    drop(command);
    let pid = child.id();
    let started = job
        .assign(child.as_raw_handle())
        .map_err(|e| format!("could not put process {pid} in a job object: {e}"))
        .and_then(|()| {
            resume_threads(pid).map_err(|e| format!("could not resume process {pid}: {e}"))
        });
    if let Err(message) = started {
        // Never leave a suspended child behind.
        let _ = child.kill();
        let _ = child.wait();
        return Err(message.into());
    }
    let child = SharedChild::new(child).map_err(|e| SpawnError::from_spawn(spec, e))?;
    Ok(Spawned {
        child,
        pid,
        group: ProcessGroup {
            id: pid,
            job: Arc::new(job),
        },
        stdout,
        stderr,
    })
}

/// Whether runstream is attached to a console (which its children then share, and through
/// which `CTRL_BREAK_EVENT` reaches them).
fn has_console() -> bool {
    let mut pids = [0u32; 4];
    // SAFETY: the buffer holds as many u32 as we say.
    unsafe { GetConsoleProcessList(pids.as_mut_ptr(), pids.len() as u32) != 0 }
}

/// Resumes every thread of process `pid` (created suspended, it has exactly one).
///
/// `std::process::Child` does not expose the primary thread's handle, so the thread is
/// found in a snapshot, as the `command-group` crate does.
fn resume_threads(pid: u32) -> io::Result<()> {
    // SAFETY: plain Win32 calls; every handle opened here is closed here, and `entry`
    // carries its own size as the API requires.
    unsafe {
        let snapshot = CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0);
        if snapshot.is_null() || snapshot as isize == -1 {
            return Err(io::Error::last_os_error());
        }
        let snapshot = OwnedHandle::from_raw_handle(snapshot as RawHandle);
        let mut entry: THREADENTRY32 = std::mem::zeroed();
        entry.dwSize = size_of::<THREADENTRY32>() as u32;
        let mut resumed = 0;
        let mut more = Thread32First(snapshot.as_raw_handle() as HANDLE, &mut entry) != 0;
        while more {
            if entry.th32OwnerProcessID == pid {
                let thread = OpenThread(THREAD_SUSPEND_RESUME, 0, entry.th32ThreadID);
                if thread.is_null() {
                    return Err(io::Error::last_os_error());
                }
                let previous = ResumeThread(thread);
                let err = io::Error::last_os_error();
                CloseHandle(thread);
                if previous == u32::MAX {
                    return Err(err);
                }
                resumed += 1;
            }
            more = Thread32Next(snapshot.as_raw_handle() as HANDLE, &mut entry) != 0;
        }
        if resumed == 0 {
            return Err(io::Error::other("no thread of the process was found"));
        }
        Ok(())
    }
}

/// A job object that kills its processes when its last handle closes.
#[derive(Debug)]
struct Job(OwnedHandle);

impl Job {
    fn new() -> io::Result<Job> {
        // SAFETY: a null name and null security attributes are allowed; the handle is
        // owned from here on.
        let job = unsafe {
            let handle = CreateJobObjectW(ptr::null(), ptr::null());
            if handle.is_null() {
                return Err(io::Error::last_os_error());
            }
            Job(OwnedHandle::from_raw_handle(handle as RawHandle))
        };
        // SAFETY: `info` is a plain C struct, valid zeroed, and its size is passed.
        unsafe {
            let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = std::mem::zeroed();
            info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
            let ok = SetInformationJobObject(
                job.handle(),
                JobObjectExtendedLimitInformation,
                &info as *const _ as *const c_void,
                size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            );
            if ok == 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(job)
    }

    fn handle(&self) -> HANDLE {
        self.0.as_raw_handle() as HANDLE
    }

    fn assign(&self, process: RawHandle) -> io::Result<()> {
        // SAFETY: both handles are valid for the call.
        if unsafe { AssignProcessToJobObject(self.handle(), process as HANDLE) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Pids of the processes in the job, as the job reports them.
    fn process_ids(&self) -> io::Result<Vec<u32>> {
        // The struct is a header and a variable-length array of ULONG_PTR: size the buffer
        // in ULONG_PTRs so the array is aligned, and grow it while the job says "more".
        let header = offset_of!(JOBOBJECT_BASIC_PROCESS_ID_LIST, ProcessIdList);
        let header_words = header.div_ceil(size_of::<usize>());
        let mut capacity = 16;
        loop {
            let mut buf = vec![0usize; header_words + capacity];
            let bytes = (buf.len() * size_of::<usize>()) as u32;
            // SAFETY: the buffer is `bytes` long and aligned for the struct.
            let ok = unsafe {
                QueryInformationJobObject(
                    self.handle(),
                    JobObjectBasicProcessIdList,
                    buf.as_mut_ptr() as *mut c_void,
                    bytes,
                    ptr::null_mut(),
                )
            };
            // SAFETY: the buffer starts with the struct's header.
            let (assigned, listed) = unsafe {
                let list = buf.as_ptr() as *const JOBOBJECT_BASIC_PROCESS_ID_LIST;
                (
                    (*list).NumberOfAssignedProcesses as usize,
                    (*list).NumberOfProcessIdsInList as usize,
                )
            };
            if ok == 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(ERROR_MORE_DATA as i32) && capacity < 1 << 20 {
                    capacity = (assigned + 16).max(capacity * 2);
                    continue;
                }
                return Err(err);
            }
            let ids = &buf[header_words..header_words + listed.min(capacity)];
            return Ok(ids.iter().map(|&id| id as u32).collect());
        }
    }

    fn terminate(&self) -> io::Result<()> {
        // SAFETY: the job handle is valid.
        if unsafe { TerminateJobObject(self.handle(), KILLED_EXIT_CODE) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Windows words for the two ways to stop a group: `Term` is `CTRL_BREAK_EVENT`, `Kill`
/// is `TerminateJobObject`.
impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "CTRL_BREAK",
            Signal::Kill => "TerminateJobObject",
        }
    }

    /// What was done, for the run's log: "sent CTRL_BREAK to process group 1234".
    pub fn sent_message(self, group: u32) -> String {
        match self {
            Signal::Term => format!("sent {} to process group {group}", self.name()),
            Signal::Kill => format!("terminated the job of process group {group}"),
        }
    }

    /// What could not be done, for the run's log.
    pub fn failure_message(self, group: u32) -> String {
        match self {
            Signal::Term => format!("could not send {} to process group {group}", self.name()),
            Signal::Kill => format!("could not terminate the job of process group {group}"),
        }
    }
}

/// A run's processes: the child leads a console process group (its pid is the group id),
/// and the child and every descendant are in the run's job object, which none can leave.
///
/// Clones share the job; when the last clone is dropped the job's handle closes and,
/// through `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`, whatever is still in it is killed. The
/// run thread and the GPU monitor hold the only clones, so that happens when the run ends.
#[derive(Clone, Debug)]
pub(crate) struct ProcessGroup {
    id: u32,
    job: Arc<Job>,
}

impl PartialEq for ProcessGroup {
    fn eq(&self, other: &ProcessGroup) -> bool {
        self.id == other.id && Arc::ptr_eq(&self.job, &other.job)
    }
}

impl Eq for ProcessGroup {}

impl ProcessGroup {
    /// The group id (the leader's pid).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `Term`: `CTRL_BREAK_EVENT` to the console process group. `Kill`: terminates every
    /// process in the job. `Ok(false)` when none is left.
    pub fn signal(&self, signal: Signal) -> io::Result<bool> {
        // If the job cannot be asked, act anyway: stopping a run must not hinge on it.
        let any_left = match self.job.process_ids() {
            Ok(ids) => ids.into_iter().any(is_run_process),
            Err(_) => true,
        };
        if !any_left {
            return Ok(false);
        }
        match signal {
            Signal::Term => {
                // SAFETY: no memory is involved. The group id stays ours: the leader's
                // handle is open until the run ends, so its pid cannot be reused.
                if unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, self.id) } == 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Signal::Kill => self.job.terminate()?,
        }
        Ok(true)
    }

    /// Processes of the job still running (console hosts aside: see `is_run_process`).
    pub fn live_members(&self) -> Vec<u32> {
        let ids = self.job.process_ids().unwrap_or_default();
        ids.into_iter().filter(|&pid| is_run_process(pid)).collect()
    }

    /// Whether process `pid` is a live member.
    pub fn contains(&self, pid: u32) -> bool {
        // SAFETY: the process handle is checked, used, and closed here.
        unsafe {
            let process = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
            if process.is_null() {
                return false;
            }
            let mut in_job = 0;
            let ok = IsProcessInJob(process, self.job.handle(), &mut in_job);
            CloseHandle(process);
            ok != 0 && in_job != 0 && is_running(pid)
        }
    }
}

/// Whether job member `pid` counts as one of the run's processes: it is running, and it is
/// not a console host. When runstream has no console, the child gets a console of its own
/// (`CREATE_NO_WINDOW`) and Windows starts a `conhost.exe` for it inside the job; that host
/// ends by itself once its console has no client left (wine's may linger), and dies with
/// the job anyway. Counting it would make every run whose leader exits wait for it.
fn is_run_process(pid: u32) -> bool {
    // The job lists only active processes on Windows; checking each one also keeps an
    // exited process out where an emulation (wine) lists it a little longer.
    if !is_running(pid) {
        return false;
    }
    image_name(pid).is_none_or(|name| !name.eq_ignore_ascii_case("conhost.exe"))
}

/// The file name of process `pid`'s executable, when it can be read.
fn image_name(pid: u32) -> Option<String> {
    let mut path = [0u16; 1024];
    let mut len = path.len() as u32;
    // SAFETY: the process handle is checked, used, and closed here; `len` is the buffer's
    // size in u16s and comes back as the length written.
    let ok = unsafe {
        let process = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if process.is_null() {
            return None;
        }
        let ok =
            QueryFullProcessImageNameW(process, PROCESS_NAME_WIN32, path.as_mut_ptr(), &mut len);
        CloseHandle(process);
        ok
    };
    if ok == 0 {
        return None;
    }
    let path = OsString::from_wide(&path[..len as usize]);
    Path::new(&path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// Whether process `pid` exists and has not exited.
fn is_running(pid: u32) -> bool {
    // SAFETY: the process handle is checked, used, and closed here.
    unsafe {
        let process = OpenProcess(PROCESS_SYNCHRONIZE, 0, pid);
        if process.is_null() {
            // Gone, or not ours to look at: a member we cannot open is still a member.
            return io::Error::last_os_error().kind() == io::ErrorKind::PermissionDenied;
        }
        let running = WaitForSingleObject(process, 0) == WAIT_TIMEOUT;
        CloseHandle(process);
        running
    }
}

/// The exit code of an exit status; Windows has no terminating signal.
pub(crate) fn exit_parts(status: ExitStatus) -> (Option<i32>, Option<i32>) {
    (status.code(), None)
}

/// A signal's name, for messages. Windows exit statuses never carry one.
pub(crate) fn signal_name(_signal: i32) -> &'static str {
    "signal"
}

/// When process `pid` started, to tell it from a later process with the same pid after a
/// restart. `None` on Windows: nothing of a run outlives runstream there (the job).
pub(crate) fn process_start_time(_pid: u32) -> Option<u64> {
    None
}

/// On unix this wakes readers blocked on a pipe that an escaped process holds. On Windows
/// no process can escape: the pipes' write ends exist only in the run's job (runstream's
/// own copies are dropped at spawn), breakaway is not allowed, and terminating the job (at
/// the end of the grace period, or when the last `ProcessGroup` clone drops the job)
/// closes them all, so a blocked read always ends with EOF. Nothing to wake.
pub(crate) struct ReadStopper;

/// The readers' side of a [`ReadStopper`]; nothing on Windows.
pub(crate) struct StopWatch;

impl StopWatch {
    pub fn try_clone(&self) -> io::Result<StopWatch> {
        Ok(StopWatch)
    }
}

/// A stopper and the watch its readers poll.
pub(crate) fn read_stopper() -> io::Result<(ReadStopper, StopWatch)> {
    Ok((ReadStopper, StopWatch))
}

/// Reads from `pipe` into `buf`: a plain blocking read (see [`ReadStopper`] for why that
/// is enough here). `Ok(Some(0))`: end of file; never `Ok(None)`.
pub(crate) fn read_or_stop(
    pipe: &mut PipeReader,
    _stop: &StopWatch,
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    loop {
        match pipe.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_job_is_empty_and_our_own_process_is_running() {
        let job = Job::new().unwrap();
        assert_eq!(job.process_ids().unwrap(), Vec::<u32>::new());
        assert!(is_running(std::process::id()));
        assert!(!is_running(u32::MAX - 3));
    }

    #[test]
    fn signal_words_say_what_windows_does() {
        assert_eq!(
            Signal::Term.sent_message(42),
            "sent CTRL_BREAK to process group 42"
        );
        assert_eq!(
            Signal::Kill.sent_message(42),
            "terminated the job of process group 42"
        );
    }
}
