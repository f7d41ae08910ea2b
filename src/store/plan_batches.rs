//! The scheduler's writes for a batch of due (plan, host) rows in a few
//! statements (`restic::scheduler::fire_due`): the batched forms of
//! [`super::plans::move_schedule`] and [`super::plans::live_backups`].
use std::collections::{HashMap, HashSet};

use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, sea_query::Expr,
};

use super::{
    Result,
    jobs::{Job, JobKind, JobStatus},
};
use crate::entities::{jobs, plan_schedules};

/// One schedule row's move: `(id, was, next_run_at, basis)`.
pub type Move = (i64, i64, i64, String);

/// [`super::plans::move_schedule`] for many rows: one UPDATE per distinct (was, next,
/// basis) (a wave's rows of one plan share them) and a few hundred ids.
/// Returns the ids moved; a row another pass moved is left alone.
pub async fn move_schedules<C: ConnectionTrait>(db: &C, moves: &[Move]) -> Result<HashSet<i64>> {
    let mut groups: HashMap<(i64, i64, &str), Vec<i64>> = HashMap::new();
    for (id, was, next, basis) in moves {
        groups
            .entry((*was, *next, basis.as_str()))
            .or_default()
            .push(*id);
    }
    let mut moved = HashSet::with_capacity(moves.len());
    for ((was, next, basis), ids) in groups {
        for chunk in ids.chunks(500) {
            let rows = plan_schedules::Entity::update_many()
                .col_expr(plan_schedules::Column::NextRunAt, Expr::value(next))
                .col_expr(plan_schedules::Column::Basis, Expr::value(basis))
                .filter(plan_schedules::Column::Id.is_in(chunk.iter().copied()))
                .filter(plan_schedules::Column::NextRunAt.eq(was))
                .exec_with_returning(db)
                .await?;
            moved.extend(rows.into_iter().map(|r| r.id));
        }
    }
    Ok(moved)
}

/// [`super::plans::live_backups`] of many (plan, host) pairs: one read per plan and a
/// few hundred hosts. Pairs with none are absent.
pub async fn live_backups_many<C: ConnectionTrait>(
    db: &C,
    pairs: &[(i64, i64)],
) -> Result<HashMap<(i64, i64), Vec<Job>>> {
    let mut by_plan: HashMap<i64, Vec<i64>> = HashMap::new();
    for (plan, host) in pairs {
        by_plan.entry(*plan).or_default().push(*host);
    }
    let mut out: HashMap<(i64, i64), Vec<Job>> = HashMap::new();
    for (plan, hosts) in by_plan {
        for chunk in hosts.chunks(500) {
            let rows = jobs::Entity::find()
                .filter(jobs::Column::PlanId.eq(plan))
                .filter(jobs::Column::HostId.is_in(chunk.iter().copied()))
                .filter(jobs::Column::Kind.eq(JobKind::Backup.as_str()))
                .filter(
                    jobs::Column::Status
                        .is_in([JobStatus::Queued.as_str(), JobStatus::Running.as_str()]),
                )
                .order_by_asc(jobs::Column::Id)
                .all(db)
                .await?;
            for r in rows {
                out.entry((plan, r.host_id)).or_default().push(r.into());
            }
        }
    }
    Ok(out)
}
