//! An undo stack: each side effect of ADD pushes its inverse; unless the ADD
//! commits, dropping the stack runs them in reverse order.

type Step<'a> = Box<dyn FnOnce() -> Result<(), String> + 'a>;

pub struct Undo<'a> {
    steps: Vec<(&'static str, Step<'a>)>,
}

impl<'a> Undo<'a> {
    pub fn new() -> Self {
        Undo { steps: Vec::new() }
    }

    pub fn push(&mut self, what: &'static str, step: impl FnOnce() -> Result<(), String> + 'a) {
        self.steps.push((what, Box::new(step)));
    }

    /// Keeps everything that was done.
    pub fn commit(mut self) {
        self.steps.clear();
    }
}

impl Default for Undo<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        // Keep going on failure: one stuck step must not strand the others.
        while let Some((what, step)) = self.steps.pop() {
            match step() {
                Ok(()) => tracing::debug!(step = what, "undone"),
                Err(e) => tracing::warn!(step = what, error = %e, "undo failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn runs_in_reverse_unless_committed() {
        let log = RefCell::new(Vec::new());
        {
            let mut u = Undo::new();
            u.push("a", || {
                log.borrow_mut().push("a");
                Ok(())
            });
            u.push("b", || Err("fails".into()));
            u.push("c", || {
                log.borrow_mut().push("c");
                Ok(())
            });
        }
        assert_eq!(*log.borrow(), vec!["c", "a"]);
        log.borrow_mut().clear();
        let mut u = Undo::new();
        u.push("a", || {
            log.borrow_mut().push("a");
            Ok(())
        });
        u.commit();
        assert!(log.borrow().is_empty());
    }
}
